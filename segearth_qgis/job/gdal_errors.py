"""GDAL errors as Python exceptions, scoped to our own calls (no global ``gdal.UseExceptions()``).

``gdal.UseExceptions()`` switches the whole QGIS process (every plugin) to
exceptions; QGIS itself does so from 3.38 on, and before it nobody does. Our
calls run the same way under either: :func:`collect_errors` pushes a
thread-local error handler around them and, where GDAL can scope it (3.7 and
newer: ``ExceptionMgr``, this thread and block only), switches GDAL's, OGR's
and OSR's exceptions on for the block, which also states the mode GDAL 3.9+
otherwise warns about (a ``FutureWarning``). :func:`checked` turns a failed
call (a None or error-code result, an error reported to the handler, or a
RuntimeError) into :class:`GdalError`; :func:`opened` is a dataset or None.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, TypeVar

from osgeo import gdal, ogr, osr

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


def scoped_exceptions() -> contextlib.ExitStack:
    """GDAL's, OGR's and OSR's Python exceptions on for a ``with`` block of this thread (GDAL 3.7+; before:
    nothing changes, and the calls report failures by their results)."""
    stack = contextlib.ExitStack()
    for module in (gdal, ogr, osr):
        manager = getattr(module, "ExceptionMgr", None)
        if manager is not None:
            stack.enter_context(manager(useExceptions=True))
    return stack


@contextlib.contextmanager
def collect_errors() -> Iterator[ErrorLog]:
    """Collect GDAL failures of this thread (warnings are ignored) instead of printing them, GDAL's exceptions
    on for the block where GDAL can scope them (see :func:`scoped_exceptions`)."""
    log = ErrorLog()

    def handler(error_class: int, number: int, message: str) -> None:
        if error_class >= gdal.CE_Failure:
            log.append(str(message).strip())

    gdal.PushErrorHandler(handler)
    try:
        with scoped_exceptions():
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
    except RuntimeError as error:  # exceptions are on (scoped here, or switched on for the process)
        raise GdalError(what, str(error).strip() or log.take() or "failed") from None
    reason = log.take()
    if reason or failed(result):
        raise GdalError(what, reason or "GDAL reported no reason")
    return result


def is_gdal_failure_code(result: object) -> bool:
    """True for GDAL's CPLErr failure codes (CE_Failure, CE_Fatal) returned by write calls."""
    return isinstance(result, int) and not isinstance(result, bool) and result >= gdal.CE_Failure


def opened(path: str, log: ErrorLog, flags: Optional[int] = None) -> Optional[gdal.Dataset]:
    """The GDAL dataset at ``path``, or None when GDAL cannot open it (in either of GDAL's error modes).

    Args:
        path: a file name or any GDAL connection string.
        log: the :func:`collect_errors` log of this thread.
        flags: ``gdal.OpenEx`` flags (``gdal.OF_RASTER``...); None: ``gdal.Open``.
    """
    try:
        return checked(f"open {path}", lambda: gdal.Open(path) if flags is None else gdal.OpenEx(path, flags), log)
    except GdalError:
        return None
