"""The HTTP service: the app, its guards and wire format, and the engines behind it (local and Ray)."""
