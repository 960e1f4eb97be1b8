"""The dock panel, its widgets and dialogs, and the task that runs its jobs."""
