"""Every error the plugin raises on purpose (stdlib only, importable anywhere), except two that stay in
their modules: ``client/backend_setup.py``'s SetupError (that script runs on its own, outside the plugin) and
``job/gdal_errors.py``'s GdalError (turned into an OutputError or LayerError before it reaches the user).

Messages say what went wrong and what to do next; the dock shows them in the
message bar, Processing as its error, unchanged. Problems with what the user
chose are :class:`InputError` (a ValueError).
"""

from __future__ import annotations

from typing import Optional


class InputError(ValueError):
    """Something the user chose cannot be used (layer, bands, area, resolution, classes, options)."""


class LayerError(InputError):
    """The layer cannot be segmented as chosen (bands, type, extent)."""


class AoiError(InputError):
    """The chosen area of interest cannot be used (nothing drawn, nothing selected...)."""


class GridError(InputError):
    """The area does not overlap the raster, or the resolution is unusable."""


class ClassesError(InputError):
    """The class list or the background choice is unusable."""


class OutputError(Exception):
    """An output cannot be written (exists, is an input, folder missing or full); nothing was written."""


class JobCancelledError(Exception):
    """The user cancelled; no output was kept."""


class BackendError(Exception):
    """The backend could not be reached, refused the request, or failed.

    ``code`` is the backend's error code (or the client's: ``unreachable``,
    ``timeout``, ``cancelled``, ``exited``...), ``status`` the HTTP status when there was one,
    ``retry_after`` the seconds the backend asked to wait before sending the request again.
    """

    def __init__(self, message: str, code: str = "backend_error", status: Optional[int] = None,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message, self.code, self.status, self.retry_after = message, code, status, retry_after


class BackendStartError(BackendError):
    """A local backend process did not start."""


class AccuracyError(InputError):
    """An accuracy assessment cannot run as asked (unmatched classes, bad mapping, no overlap)."""
