"""Sending a backend request again when the failure is passing: lost connection, timeout, 503.

A backend restarting, a Ray replica or node lost, a proxy hiccup: the
request is sent again after an exponential backoff (or the ``Retry-After``
the backend asked for, when longer), up to :attr:`RetryPolicy.retries`
times, and every retry is logged. Refusals (4xx), internal errors (500), a
model that failed to load and cancels are never retried.

The one retry loop and the one cancellable wait of the plugin: the job's
blocks (:func:`with_retries` with :data:`DEFAULT_RETRY`) and the client's
own wait for a busy backend (:mod:`.backend_client`) both run here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from ..errors import BackendError

T = TypeVar("T")

#: Client-side failures worth another try (the backend may be back, or another replica may answer).
PASSING_CODES = frozenset({"unreachable", "timeout", "truncated_answer"})
#: 503 answers that will not change by waiting.
LASTING_503_CODES = frozenset({"model_failed"})
#: Seconds between two looks at the cancel flag while waiting.
WAIT_STEP = 0.1


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait: ``first_delay * factor**n`` seconds before retry ``n + 1``.

    Attributes:
        retries: retries after the first attempt.
        first_delay: seconds before the first retry.
        factor: growth of the delay from one retry to the next.
        max_delay: the longest wait, ``Retry-After`` included.
    """

    retries: int = 3
    first_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.first_delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, retry: int, error: BackendError) -> float:
        """Seconds to wait before retry number ``retry`` (from 0): the backoff, or ``Retry-After`` if longer."""
        backoff = self.first_delay * self.factor ** retry
        return min(self.max_delay, max(backoff, error.retry_after or 0.0))


#: Three retries after 1, 2 and 4 seconds (or longer when the backend asks with Retry-After).
DEFAULT_RETRY = RetryPolicy()


def is_passing(error: BackendError) -> bool:
    """True when sending the same request again may succeed."""
    if error.code == "cancelled":
        return False
    if error.status == 503:
        return error.code not in LASTING_503_CODES
    return error.status is None and error.code in PASSING_CODES


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy, cancelled: Callable[[], bool],
                 log: Callable[[str], None], passing: Callable[[BackendError], bool] = is_passing,
                 deadline: Optional[float] = None) -> T:
    """``call()``, sent again after ``passing`` failures (:func:`is_passing` by default); ``log`` says what was
    retried. With a ``deadline`` (``time.monotonic()``), a retry that could not start before it is not made.

    Raises:
        BackendError: the last failure (code ``cancelled`` when ``cancelled()`` became true while waiting).
    """
    retry = 0
    while True:
        try:
            return call()
        except BackendError as error:
            if not passing(error) or cancelled():
                raise
            if retry >= policy.retries:
                log(f"{what}: failed again ({_reason(error)}); giving up after {retry} retries.")
                raise
            delay = policy.delay(retry, error)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise
            retry += 1
            log(f"{what}: {_reason(error)}; sending it again in {delay:.1f} s (retry {retry} of {policy.retries}).")
            if wait_unless_cancelled(delay, cancelled):
                raise BackendError("The request was cancelled.", "cancelled") from None


def _reason(error: BackendError) -> str:
    status = f"{error.status} " if error.status else ""
    return f"{status}{error.code}: {error.message[:160]}"


def wait_unless_cancelled(seconds: float, cancelled: Callable[[], bool]) -> bool:
    """Sleep ``seconds`` in short steps; True as soon as ``cancelled()`` is true (then it returns at once)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cancelled():
            return True
        time.sleep(min(WAIT_STEP, max(0.0, end - time.monotonic())))
    return cancelled()
