"""What a Processing algorithm that runs the job engine says: its errors as QgsProcessingException, its run."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from qgis.core import QgsProcessingException, QgsProcessingFeedback

from ..client.backend_manager import shared_manager
from ..errors import BackendError, JobCancelledError, OutputError

CANCELLED = "Cancelled: no output was written."


def failure(message: str, feedback: QgsProcessingFeedback) -> QgsProcessingException:
    """The error to raise: a long message (a list of missing files, a log tail) is written to the log once,
    and the exception carries its first line, since QGIS repeats an algorithm's error in several places."""
    lines = message.strip().splitlines()
    if len(lines) <= 2:
        return QgsProcessingException(message)
    feedback.pushInfo(message)
    return QgsProcessingException(f"{lines[0].rstrip(':')} (the details are above).")


@contextlib.contextmanager
def job_errors(feedback: QgsProcessingFeedback) -> Iterator[None]:
    """Every failure of planning or running a job becomes a QgsProcessingException that says what to do."""
    try:
        yield
    except JobCancelledError:
        raise QgsProcessingException(CANCELLED) from None
    except BackendError as error:
        if error.code == "cancelled" or feedback.isCanceled():
            raise QgsProcessingException(CANCELLED) from None
        raise failure(shared_manager().explain(error), feedback) from None
    except (ValueError, OutputError, OSError) as error:
        raise QgsProcessingException(str(error)) from None


def report_run(feedback: QgsProcessingFeedback, result: Any, blocks: str = "block(s)",
               at_once: str = "at once") -> None:
    """The run's warnings, then one line: ``result.blocks`` blocks in ``result.seconds``, how many requests
    were in flight at once and how many were sent again (a JobResult or a ChangeResult)."""
    for warning in result.warnings:
        feedback.reportError(warning, fatalError=False)
    concurrency = f", up to {result.concurrency} {at_once}" if result.concurrency > 1 else ""
    retried = f"; {len(result.retried)} request(s) sent again (see above)" if result.retried else ""
    feedback.pushInfo(f"{result.blocks} {blocks} in {result.seconds:.1f} s{concurrency}{retried}")
