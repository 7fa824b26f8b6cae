"""One sandbox's status writes, in order: now, in the background, or later when the server is away.

A write the API server does not take (it is unreachable, it keeps conflicting) is kept and sent
with the next one, so a lost write never changes what happens to the sandbox; a write the server
refuses outright is dropped with an error. Writes that need not hold up a boot run on the shared
pool, still in order per sandbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from vmsandbox.api.status import VMSandboxStatus
from vmsandbox.kube.retry import WriteDeferred, retry_hint
from vmsandbox.node_agent.logs import SandboxLog
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.statuswriter import Abort, Mutation, SandboxWriter, WriteFailed

Obj = dict[str, Any]


@dataclass(eq=False, repr=False, kw_only=True)
class StatusQueue:
    uid: str
    writer: SandboxWriter
    pool: Executor
    metrics: AgentMetrics
    log: SandboxLog
    abort: Abort
    latest: Callable[[], Obj | None]
    wrote: Callable[[Obj], None]
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _queued: Future[Obj | None] | None = field(init=False, default=None)
    #: Status changes the API server has not taken yet, oldest first (sent with the next write).
    _pending: list[Mutation] = field(init=False, default_factory=list)

    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def later(self, mutate: Mutation) -> None:
        """Queue a write behind the ones already queued; the caller goes on meanwhile."""
        previous = self._queued

        def run() -> Obj | None:
            obj = self._result_of(previous) or self.latest()
            if obj is None:
                return None
            written = self.write(obj, mutate, settle=False)
            return None if self.has_pending() else written

        self._queued = self.pool.submit(run)

    def settle(self) -> Obj | None:
        """Wait for queued writes; returns the object the last one wrote."""
        queued, self._queued = self._queued, None
        return self._result_of(queued)

    def write(self, obj: Obj, mutate: Mutation, *, settle: bool = True) -> Obj:
        """Send ``mutate`` (after any changes still pending); returns the object as written."""
        if settle:
            obj = self.settle() or obj
        with self._lock:
            mutations, self._pending = [*self._pending, mutate], []

        def apply_all(status: VMSandboxStatus) -> None:
            for each in mutations:
                each(status)

        t0 = time.monotonic()
        try:
            written = self.writer.update_status(obj, apply_all, uid=self.uid, abort=self.abort)
        except (WriteDeferred, WriteFailed) as exc:
            return self._defer(obj, mutations, exc)
        except Exception as exc:
            if retry_hint(exc) is None:
                raise
            return self._defer(obj, mutations, exc)
        finally:
            self.metrics.step.labels("statusWrite").observe(time.monotonic() - t0)
        if written is None:
            return obj
        self.wrote(written)
        return written

    def _result_of(self, queued: Future[Obj | None] | None) -> Obj | None:
        if queued is None:
            return None
        try:
            return queued.result()
        except Exception as exc:
            self.log.warning("status write failed: %s", exc)
            return None

    def _defer(self, obj: Obj, mutations: list[Mutation], exc: Exception) -> Obj:
        if isinstance(exc, WriteFailed):
            # The server refused the change itself (not "not now"): sending it again cannot help.
            self.log.error("status write refused; dropped: %s", exc)
            return obj
        with self._lock:
            self._pending = mutations + self._pending
        self.metrics.writes_deferred.inc()
        self.log.warning("status write deferred until the API server answers: %s", exc)
        return obj
