"""The backend from the plugin's side: set it up, start it, talk to it (stdlib + numpy, no QGIS)."""
