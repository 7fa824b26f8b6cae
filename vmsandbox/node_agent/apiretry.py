"""Which failed API calls are worth repeating, and how long to wait before the next try.

A status write that fails because the API server is down, overloaded or briefly conflicting
says nothing about the sandbox: it is tried again with capped exponential back-off, honouring
a ``Retry-After`` the server sent. Only answers that repeating cannot change (a 403, an invalid
body) end the attempts.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from vmsandbox.errors import VMSandboxError

T = TypeVar("T")

#: Answers that say "not now" rather than "no".
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
FIRST_DELAY = 0.2
MAX_DELAY = 5.0


class WriteDeferred(VMSandboxError):
    """The API stayed unreachable for as long as the caller was willing to wait; try again later."""

    step = "status write"


def retry_hint(exc: BaseException) -> float | None:
    """Seconds the server asked to wait (0 when it named none) for a transient failure; None otherwise."""
    if isinstance(exc, ApiException):
        if exc.status not in TRANSIENT_STATUSES and exc.status != 0:
            return None
        headers = exc.headers or {}
        raw = headers.get("Retry-After") if hasattr(headers, "get") else None
        try:
            return max(0.0, float(raw)) if raw is not None else 0.0
        except (TypeError, ValueError):
            return 0.0
    if isinstance(exc, Urllib3Error | OSError | http.client.HTTPException):
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
                raise WriteDeferred(f"{what}: the API server did not answer ({_describe(exc)})") from exc
            sleeper.wait(wait)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
