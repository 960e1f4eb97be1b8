"""Every error the backend raises on purpose (the wire format's ProtocolError, an InputError, is
:mod:`.serve.protocol`'s; :class:`ApiError` is the HTTP answer the service and its engines give).

Each message says what went wrong *and* what to do next; callers (the HTTP
service, the CLI, the QGIS plugin) show ``str(error)`` to the user as is.
Input problems subclass :class:`ValueError` so generic callers can treat them
as bad input.
"""

from __future__ import annotations

import reprlib
from typing import Any, Optional

from .request_rules import QUOTE_CHARS

#: The longest message an HTTP error answer carries (a last bound behind :func:`quote`).
MAX_MESSAGE_CHARS = 600


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``value`` for a message: its repr, with strings, containers and numbers cut to about ``limit`` characters."""
    shorten = reprlib.Repr()
    shorten.maxstring = shorten.maxother = shorten.maxlong = limit
    shorten.maxlist = shorten.maxtuple = shorten.maxdict = shorten.maxset = 4
    shorten.maxlevel = 2
    try:
        text = shorten.repr(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        return "<a number of more than 4000 digits>"
    return text if len(text) <= limit + 10 else text[:limit] + "..."


class SegEarthError(Exception):
    """Base class of every deliberate backend error."""

    code = "segearth_error"


class InputError(SegEarthError, ValueError):
    """The caller passed something the engine cannot work with."""

    code = "bad_input"


class ClassListError(InputError):
    """The class list is empty, has blank or duplicate names, or is too long."""

    code = "bad_classes"


class ImageError(InputError):
    """The image or its valid mask has the wrong dtype, shape or values."""

    code = "bad_image"


class ShapeError(ImageError):
    """The image is so thin and long that padding its windows would cost far more than its pixels."""

    code = "bad_shape"


class ParameterError(InputError):
    """A numeric parameter (threshold, background index, lambda...) is out of range."""

    code = "bad_parameter"


class PredictionCancelledError(SegEarthError):
    """``should_stop()`` asked a prediction to stop; it stopped between two batches of windows."""

    code = "cancelled"


class WeightsError(SegEarthError):
    """Model weights could not be found, downloaded or loaded."""

    code = "weights_error"


class WeightsNotFoundError(WeightsError):
    """Weights are not on disk and could not be downloaded (offline)."""

    code = "weights_missing"


class ChecksumError(WeightsError):
    """A downloaded weights file does not have the expected sha256 (it is not kept)."""

    code = "bad_checksum"


class CheckpointError(WeightsError, ValueError):
    """A checkpoint file exists but is unreadable, truncated or of the wrong layout."""

    code = "bad_checkpoint"


class ModelConfigError(SegEarthError, ValueError):
    """The model name or JSON config is unknown or malformed."""

    code = "bad_model"


class ConfigError(SegEarthError, ValueError):
    """A setting (command-line option or environment variable: port, queue, token file, sha256...) is invalid."""

    code = "bad_config"


class DeviceError(SegEarthError):
    """The requested compute device is not available."""

    code = "device_unavailable"


class UpsamplerMismatchError(ModelConfigError):
    """The requested feature upsampler does not fit the CLIP model's features."""

    code = "upsampler_mismatch"


class DatasetError(SegEarthError, ValueError):
    """A benchmark dataset is unknown, missing, or not laid out as its config expects."""

    code = "bad_dataset"


class ApiError(Exception):
    """An error the service answers as ``{"error": code, "message": ...}`` with an HTTP status (and headers).

    Raised by the HTTP layer and by the engines behind it (busy, loading, out of memory, a lost replica).
    """

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
