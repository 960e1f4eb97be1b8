"""GDAL errors as Python exceptions, scoped to our own calls (no global ``gdal.UseExceptions()``).

``gdal.UseExceptions()`` switches the whole QGIS process (every plugin) to
exceptions. Instead, :func:`collect_errors` pushes a thread-local error
handler around our calls, and :func:`checked` turns a failed call (a None or
error-code result, an error reported to the handler, or a RuntimeError when
someone else did switch exceptions on) into :class:`GdalError`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

from osgeo import gdal

T = TypeVar("T")


class GdalError(RuntimeError):
    """A GDAL/OGR call failed; ``reason`` is GDAL's own message."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what, self.reason = what, reason


class ErrorLog(list[str]):
    """The failure messages GDAL reported on this thread while the handler was pushed."""

    def take(self) -> str:
        """The messages so far, joined, and forget them."""
        text = "; ".join(dict.fromkeys(self))
        self.clear()
        return text


@contextlib.contextmanager
def collect_errors() -> Iterator[ErrorLog]:
    """Collect GDAL failures of this thread (warnings are ignored) instead of printing them."""
    log = ErrorLog()

    def handler(error_class: int, number: int, message: str) -> None:
        if error_class >= gdal.CE_Failure:
            log.append(str(message).strip())

    gdal.PushErrorHandler(handler)
    try:
        yield log
    finally:
        gdal.PopErrorHandler()


def checked(what: str, call: Callable[[], T], log: ErrorLog, failed: Callable[[T], bool] = lambda r: r is None) -> T:
    """Run ``call``; raise :class:`GdalError` if it failed in any of GDAL's ways.

    Args:
        what: what was attempted, for the message ("write block 3 of out.tif").
        call: the GDAL call.
        log: the :func:`collect_errors` log of this thread.
        failed: whether the return value itself means failure (default: None).
    """
    log.take()
    try:
        result = call()
    except RuntimeError as error:  # exceptions were switched on by someone else
        raise GdalError(what, str(error) or "failed") from None
    reason = log.take()
    if reason or failed(result):
        raise GdalError(what, reason or "GDAL reported no reason")
    return result


def is_gdal_failure_code(result: object) -> bool:
    """True for GDAL's CPLErr failure codes (CE_Failure, CE_Fatal) returned by write calls."""
    return isinstance(result, int) and not isinstance(result, bool) and result >= gdal.CE_Failure
