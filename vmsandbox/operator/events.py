"""Kubernetes Events for each decision, posted off the reconcile path so decisions never wait on them.

``record`` only files the Event; one background task posts them. The one Event every sandbox
gets, Scheduled, is filed with ``hold=True``: it waits until the reconcile queue has been idle
for ``quiet`` seconds, so its POST does not compete with the writes and watch deliveries the
next placement is waiting for; while the operator stays busy longer than ``max_delay`` they are
posted anyway, rate-limited (a token bucket of ``qps``, ``burst``), so a burst of decisions
becomes a steady trickle of Events rather than a second burst of writes. Other Events
(failures, node loss: rare, and read right after the state they explain) go out first and at
once, within the same rate limit. What waits, its de-duplication and its bound are the
:class:`~vmsandbox.kube.events.EventBuffer`'s; the ones :meth:`stop` could not post in time are
dropped and counted as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from vmsandbox.kube import ApiError
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.events import EventBuffer
from vmsandbox.kube.paths import events_path

log = logging.getLogger("vmsandbox.operator.events")

COMPONENT = "vmsandbox-operator"


def _never_busy() -> float:
    return math.inf


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` waits for one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self) -> None:
        self._refill()
        while self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self.rate)
            self._refill()
        self._tokens -= 1


class EventRecorder:
    """The buffer drained by one task (see the module doc)."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        enabled: bool = True,
        host: str = "",
        limit: int = 5000,
        qps: float = 20.0,
        burst: int = 50,
        quiet: float = 0.05,
        max_delay: float = 1.0,
        idle_for: Callable[[], float] = _never_busy,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._enabled = enabled
        self._buffer = EventBuffer(component=COMPONENT, host=host, limit=limit, on_drop=on_drop)
        self._bucket = TokenBucket(qps, burst)
        self._quiet = quiet
        self._max_delay = max_delay
        #: Seconds the decisions have been idle (0 while busy); set by the operator's runner.
        self.idle_for = idle_for
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._flushing = False
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    @property
    def posted(self) -> int:
        return self._buffer.posted

    @property
    def failed(self) -> int:
        return self._buffer.failed

    def record(
        self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False, hold: bool = False
    ) -> None:
        """An Event about ``obj`` (the sandbox); ``hold``: wait for the decisions to be quiet
        (see the module doc)."""
        if not self._enabled:
            return
        self._buffer.file(obj, reason, message, warning=warning, hold=hold)
        self._drained.clear()
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="events")

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Post what is waiting (no more holding back) for up to ``flush_timeout`` seconds, then stop."""
        if self._task is None:
            return
        self._flushing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), flush_timeout)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        while len(self._buffer):  # not posted in time: dropped, and counted as such
            self._buffer.drop("not posted before stopping")

    async def _drain(self) -> None:
        while True:
            if not len(self._buffer):
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            # Held ones posted while the decisions stay busy, and urgent ones, at the rate limit.
            if self._buffer.urgent or await self._hold_back():
                await self._bucket.take()
            filed = self._buffer.take()  # urgent ones filed meanwhile go first
            if filed is None:  # dropped meanwhile
                continue
            try:
                await self._client.create(events_path(filed.namespace), filed.event)
            except ApiError as exc:
                self._buffer.outcome(filed, exc)
            else:
                self._buffer.outcome(filed, None)

    async def _hold_back(self) -> bool:
        """Wait until the decisions have been quiet for ``quiet`` seconds (False), the oldest held
        Event is ``max_delay`` old while they are not (True), or an urgent Event is filed."""
        while self._buffer.held and not self._buffer.urgent and not self._flushing:
            idle = self.idle_for()
            if idle >= self._quiet:
                return False
            left = self._max_delay - (self._buffer.oldest_held_age() or 0.0)
            if left <= 0:
                return True
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.002, min(self._quiet - idle, left)))
        return False
