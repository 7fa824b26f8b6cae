"""Kubernetes Events for each decision, posted off the reconcile path so decisions never wait on them.

``record`` only files the Event; one background task posts them. The one Event every sandbox
gets, Scheduled, is filed with ``hold=True``: it waits until the reconcile queue has been idle
for ``quiet`` seconds, so its POST does not compete with the writes and watch deliveries the
next placement is waiting for; while the operator stays busy longer than ``max_delay`` they are
posted anyway, rate-limited (a token bucket of ``qps``, ``burst``), so a burst of decisions
becomes a steady trickle of Events rather than a second burst of writes. Other Events
(failures, node loss: rare, and read right after the state they explain) go out first and at
once, within the same rate limit. An Event equal to one still waiting (same object, type,
reason and message) raises that one's ``count`` instead of being filed twice. At most ``limit``
Events wait; beyond that the oldest (held ones first) is dropped, and every drop is counted
(``dropped``, ``on_drop``) and logged, as are the ones :meth:`stop` could not post in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmsandbox.kube import ApiError
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.events import MESSAGE_LIMIT, NORMAL, WARNING, event_body
from vmsandbox.kube.leases import micro_time
from vmsandbox.kube.paths import events_path

log = logging.getLogger("vmsandbox.operator.events")

COMPONENT = "vmsandbox-operator"


def _never_busy() -> float:
    return math.inf


@dataclass
class _Filed:
    namespace: str
    event: dict[str, Any]
    queued: float = field(default_factory=time.monotonic)


_Key = tuple[str, ...]


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
    """A bounded, de-duplicating set of waiting Events drained by one task (see the module doc)."""

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
        self._host = host
        self._limit = max(1, limit)
        self._bucket = TokenBucket(qps, burst)
        self._quiet = quiet
        self._max_delay = max_delay
        #: Seconds the decisions have been idle (0 while busy); set by the operator's runner.
        self.idle_for = idle_for
        self._on_drop = on_drop
        self._urgent: OrderedDict[_Key, _Filed] = OrderedDict()
        self._held: OrderedDict[_Key, _Filed] = OrderedDict()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.posted = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._urgent) + len(self._held)

    def record(
        self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False, hold: bool = False
    ) -> None:
        """An Event about ``obj`` (the sandbox); ``hold``: wait for the decisions to be quiet
        (see the module doc)."""
        if not self._enabled:
            return
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        kind = WARNING if warning else NORMAL
        message = message[:MESSAGE_LIMIT]
        key = (namespace, str(meta.get("name")), str(meta.get("uid")), kind, reason, message)
        same = self._urgent.get(key) or self._held.get(key)
        if same is not None:
            same.event["count"] += 1
            same.event["lastTimestamp"] = micro_time()
            return
        if len(self) >= self._limit:
            self._drop(f"more than {self._limit} were waiting")
        event = event_body(obj, kind, reason, message, component=COMPONENT, host=self._host)
        filed = _Filed(namespace, event)
        (self._held if hold else self._urgent)[key] = filed
        self._drained.clear()
        self._wake.set()

    def _drop(self, why: str) -> None:
        (self._held or self._urgent).popitem(last=False)
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("%d Events dropped so far (%s)", self.dropped, why)

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
        while len(self):  # not posted in time: dropped, and counted as such
            self._drop("not posted before stopping")

    async def _drain(self) -> None:
        while True:
            if not len(self):
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            # Held ones posted while the decisions stay busy, and urgent ones, at the rate limit.
            if self._urgent or await self._hold_back():
                await self._bucket.take()
            waiting = self._urgent or self._held  # urgent ones filed meanwhile go first
            if not waiting:  # dropped meanwhile
                continue
            _, filed = waiting.popitem(last=False)
            try:
                await self._client.create(events_path(filed.namespace), filed.event)
                self.posted += 1
            except ApiError as exc:
                self.failed += 1
                log.debug("event not posted: %s", exc)

    async def _hold_back(self) -> bool:
        """Wait until the decisions have been quiet for ``quiet`` seconds (False), the oldest held
        Event is ``max_delay`` old while they are not (True), or an urgent Event is filed."""
        while self._held and not self._urgent and not self._flushing:
            idle = self.idle_for()
            if idle >= self._quiet:
                return False
            left = self._max_delay - (time.monotonic() - next(iter(self._held.values())).queued)
            if left <= 0:
                return True
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.002, min(self._quiet - idle, left)))
        return False
