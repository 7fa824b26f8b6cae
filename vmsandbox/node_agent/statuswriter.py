"""Writes to a sandbox that never overwrite someone else's: status through /status, finalizers by JSON patch.

Every status write carries the resourceVersion it was computed from, every finalizer patch a
test of the finalizer list it was computed from. On a conflict the object is read again and
the same change is applied to the fresh copy, so the operator's fields (nodeName,
the Scheduled condition, bootTimings.schedule) survive the agent's writes and vice versa.
A change that alters nothing is not sent at all.

A write the API server cannot take now (5xx, 429, a timeout, no connection, conflicts in a
row) is tried again with capped back-off (:mod:`vmsandbox.kube.retry`) until it
lands, the caller's ``abort`` says stop or its ``patience`` runs out: then
:class:`~vmsandbox.kube.retry.WriteDeferred` tells the caller to keep the change and
send it later. No failed write is ever a verdict on the sandbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from vmsandbox.api.status import VMSandboxStatus
from vmsandbox.errors import VMSandboxError
from vmsandbox.kube import ApiError
from vmsandbox.kube.patches import edit_finalizer
from vmsandbox.kube.retry import Backoff, WriteDeferred, call_with_retries
from vmsandbox.node_agent.kube import Kube
from vmsandbox.node_agent.metrics import AgentMetrics

log = logging.getLogger("vmsandbox.node_agent.status")

#: Conflicts answered by an immediate re-read before the re-reads are spaced out by back-off.
QUICK_CONFLICTS = 3
#: How long one write keeps trying by default before the caller is told to try later.
PATIENCE_SECONDS = 30.0
T = TypeVar("T")
Mutation = Callable[[VMSandboxStatus], None]
Abort = Callable[[], bool]
#: What a compare-and-swap step asks for: the call that writes its change, ``done`` when the copy
#: it was given already holds it, ``reread`` when only a fresh copy can tell.
Write = Callable[[], dict[str, Any]] | Literal["done", "reread"]
#: The step itself, given the current copy and whether it was just read from the server.
Step = Callable[[dict[str, Any], bool], Write]


class WriteFailed(VMSandboxError):
    step = "status write"


def read_status(obj: dict[str, Any]) -> VMSandboxStatus:
    """The object's status; a status that no longer parses is started afresh rather than kept."""
    try:
        return VMSandboxStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        return VMSandboxStatus()


class SandboxWriter:
    def __init__(self, kube: Kube, metrics: AgentMetrics, patience: float | None = PATIENCE_SECONDS) -> None:
        self.kube = kube
        self.metrics = metrics
        self.patience = patience

    def _retrying(self, what: str, call: Callable[[], T], deadline: float | None, abort: Abort | None) -> T:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return call_with_retries(what, call, patience=left, abort=abort, on_retry=self._count_retry)

    def _write(
        self, what: str, call: Callable[[], dict[str, Any]], deadline: float | None, abort: Abort | None
    ) -> dict[str, Any] | Literal[False] | None:
        """The object as written; None when it is gone; False when the write lost its
        compare-and-swap (the caller re-reads and computes it again)."""
        try:
            return self._retrying(what, call, deadline, abort)
        except ApiError as exc:
            if exc.not_found:
                return None
            if exc.conflict:
                return False
            raise WriteFailed(f"{what}: HTTP {exc.status}: {exc.message}") from exc

    def _count_retry(self, exc: BaseException) -> None:
        log.info("API call failed (%s); retrying", exc.__class__.__name__)
        self.metrics.write_retries.inc()

    def _deadline(self) -> float | None:
        return None if self.patience is None else time.monotonic() + self.patience

    def _conflict_pause(
        self, conflicts: int, backoff: Backoff, deadline: float | None, abort: Abort | None
    ) -> None:
        """After a few immediate re-reads, conflicts in a row are spaced out too."""
        if conflicts <= QUICK_CONFLICTS:
            return
        wait = backoff.delay()
        if (abort is not None and abort()) or (deadline is not None and time.monotonic() + wait > deadline):
            raise WriteDeferred(f"still conflicting after {conflicts} attempts")
        time.sleep(wait)

    def _fresh(
        self, namespace: str, name: str, deadline: float | None = None, abort: Abort | None = None
    ) -> dict[str, Any] | None:
        return self._retrying(
            f"reading {namespace}/{name}", lambda: self.kube.get_sandbox(namespace, name), deadline, abort
        )

    def _swap(
        self,
        obj: dict[str, Any],
        uid: str | None,
        what: str,
        step: Step,
        abort: Abort | None,
        lost: Callable[[], None],
    ) -> dict[str, Any] | None:
        """The compare-and-swap loop of every write: ``step`` turns the current copy into the
        write (or says it is already done, or wants a fresh copy); a lost swap reads the object
        again and asks again, spaced out by back-off after a few, and is reported to ``lost``.
        None when the object is gone or is now another one."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        current: dict[str, Any] | None = obj
        fresh = False
        deadline, backoff, conflicts = self._deadline(), Backoff(), 0
        while True:
            if current is None or current["metadata"].get("uid") != uid:
                return None
            write = step(current, fresh)
            if write == "done":
                return current
            if write != "reread":
                written = self._write(f"{namespace}/{name}: {what}", write, deadline, abort)
                if written is not False:
                    return written
                lost()
                conflicts += 1
                self._conflict_pause(conflicts, backoff, deadline, abort)
            current, fresh = self._fresh(namespace, name, deadline, abort), True

    def update_status(
        self, obj: dict[str, Any], mutate: Mutation, *, uid: str | None = None, abort: Abort | None = None
    ) -> dict[str, Any] | None:
        """Apply ``mutate`` to the status of ``obj`` (re-read on conflict); None when the object is gone."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]

        def step(current: dict[str, Any], fresh: bool) -> Write:
            status = read_status(current)
            before = status.to_wire()
            mutate(status)
            after = status.to_wire()
            if after == before and current.get("status") is not None:
                return "done"
            body = {**current, "status": after}
            return lambda: self.kube.replace_status(namespace, name, body)

        uid = uid or obj["metadata"].get("uid")
        return self._swap(obj, uid, "status", step, abort, self.metrics.status_conflicts.inc)

    def set_finalizer(
        self, obj: dict[str, Any], finalizer: str, present: bool, *, abort: Abort | None = None
    ) -> dict[str, Any] | None:
        """Add or remove one finalizer, guarded by a test of the list; None when the object is gone."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]

        def step(current: dict[str, Any], fresh: bool) -> Write:
            meta = current["metadata"]
            if (finalizer in list(meta.get("finalizers") or [])) == present:
                # A removal must not be skipped on the word of a stale copy.
                return "done" if present or fresh else "reread"
            ops = edit_finalizer(meta, finalizer, present)
            return lambda: self.kube.patch_sandbox(namespace, name, ops)

        return self._swap(obj, obj["metadata"].get("uid"), "finalizer", step, abort, lambda: None)
