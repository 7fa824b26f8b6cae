"""Which failed API calls are worth repeating, and how long to wait before the next try.

A write that fails because the API server is down, overloaded or failing says nothing about
the object: it is tried again with capped exponential back-off, honouring a ``Retry-After``
the server sent. Only answers that repeating cannot change (a 403, an invalid body, a
conflict the caller must recompute for) end the attempts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from vmsandbox.errors import VMSandboxError
from vmsandbox.kube.errors import ApiError

T = TypeVar("T")

FIRST_DELAY = 0.2
MAX_DELAY = 5.0


class WriteDeferred(VMSandboxError):
    """The API stayed unreachable for as long as the caller was willing to wait; try again later."""

    step = "status write"


def retry_hint(exc: BaseException) -> float | None:
    """Seconds to wait at least (0 when the server named none) before repeating the call that
    raised ``exc``; None when repeating cannot help."""
    if isinstance(exc, ApiError):
        return exc.retry_after if exc.retryable else None
    if isinstance(exc, OSError):
        return 0.0
    return None


class Backoff:
    """Capped exponential delays: 0.2 s, 0.4 s, ... 5 s."""

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> None:
        self.first, self.cap = first, cap
        self.next = first

    def delay(self, hint: float = 0.0) -> float:
        chosen = min(self.cap, max(self.next, hint))
        self.next = min(self.cap, self.next * 2)
        return chosen


def call_with_retries(
    what: str,
    call: Callable[[], T],
    *,
    patience: float | None,
    abort: Callable[[], bool] | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
) -> T:
    """``call()`` until it succeeds, fails for good, ``abort()`` says stop or ``patience`` runs out.

    Raises what ``call`` raised for a failure that repeating cannot fix, and
    :class:`WriteDeferred` when giving up on a transient one.
    """
    backoff = backoff or Backoff()
    deadline = None if patience is None else time.monotonic() + patience
    sleeper = stop or threading.Event()
    while True:
        try:
            return call()
        except Exception as exc:
            hint = retry_hint(exc)
            if hint is None:
                raise
            if on_retry is not None:
                on_retry(exc)
            wait = backoff.delay(hint)
            if (abort is not None and abort()) or (
                deadline is not None and time.monotonic() + wait > deadline
            ):
                raise WriteDeferred(f"{what}: the API server did not answer ({exc})") from exc
            sleeper.wait(wait)
