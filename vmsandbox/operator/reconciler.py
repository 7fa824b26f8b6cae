"""The operator's reconcile loop: one sandbox at a time per key, acting only while leading.

Level-triggered: each pass looks at the cached object and does the one next thing (record
an invalid spec, schedule, finish recording a placement, handle node loss, TTL, deletion).
Every write is a compare-and-swap (JSON patch ``test`` ops on exactly the fields the
decision read), so a pass that raced with an agent, another replica or a stale cache fails
cleanly and is redone on fresh data instead of overwriting anything.

The scheduling decision is recorded in two writes, because the label is metadata and the
rest is status: first finalizer + label ``vmsandbox.io/node`` (the decision of record: agents
select on it, and it is set at most once, guarded by a test that it is absent), then the
status (nodeName, phase Scheduled, condition, bootTimings.schedule). If the operator dies
between the two, the next pass finds the label and completes the status; it never decides again.

Only the operator decides placements. A label it did not write (a tenant may set it when
creating the sandbox where no admission policy stops it) is completed only if the node could
have been chosen: live agent, nodeSelector, taints, hypervisor and room. Otherwise, and when
the label no longer matches the recorded ``status.nodeName``, the sandbox fails with reason
Invalid naming the label.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vmsandbox.api import BootTimings, ConditionStatus, ConditionType, NetworkStatus, Phase, VMSandboxStatus
from vmsandbox.api.constants import AGENT_FINALIZER, NODE_LABEL, OPERATOR_FINALIZER, POOL_LABEL
from vmsandbox.api.reasons import EventReason, StatusReason
from vmsandbox.kube import ApiError
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.patches import expect, pointer, replace_if_unchanged, same_object, set_finalizers
from vmsandbox.kube.paths import sandbox_path
from vmsandbox.operator import lifecycle as lc
from vmsandbox.operator.cache import ClusterCache, SandboxEntry, Source, sandbox_key
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.events import EventRecorder
from vmsandbox.operator.metrics import OperatorMetrics
from vmsandbox.operator.poolcontroller import PoolController
from vmsandbox.operator.scheduling import (
    NOTHING,
    Placement,
    ReservationLedger,
    Unschedulable,
    decide,
    why_not,
)
from vmsandbox.operator.workqueue import WorkQueue

log = logging.getLogger("vmsandbox.operator")


def _status_ops(raw: dict[str, Any], status: VMSandboxStatus) -> list[dict[str, Any]]:
    """Replace the whole status if, and only if, nobody changed it since ``raw`` was read."""
    return replace_if_unchanged(raw, "/status", raw.get("status"), status.to_wire())


def _phase_from_conditions(status: VMSandboxStatus) -> Phase:
    """Where a sandbox whose agent came back most likely is, from what the agent last reported."""
    for kind, phase in (
        (ConditionType.CONTAINER_READY, Phase.RUNNING),
        (ConditionType.VM_READY, Phase.CREATING),
    ):
        cond = status.condition(kind)
        if cond is not None and cond.status is ConditionStatus.TRUE:
            return phase
    return Phase.SCHEDULED


@dataclass(eq=False, repr=False)
class Reconciler:
    config: OperatorConfig
    client: AsyncClient
    cache: ClusterCache
    metrics: OperatorMetrics
    events: EventRecorder
    leading: Callable[[], bool]
    queue: WorkQueue = field(init=False, default_factory=WorkQueue)
    ledger: ReservationLedger = field(init=False, default_factory=ReservationLedger)
    #: key -> consecutive failed attempts
    _unschedulable: dict[str, int] = field(init=False, default_factory=dict)
    #: uid -> monotonic time first seen finished
    _finished_seen: dict[str, float] = field(init=False, default_factory=dict)
    #: node -> monotonic time first seen without a Lease
    _silent_since: dict[str, float] = field(init=False, default_factory=dict)
    #: why evictions are paused, while they are
    _brake: str | None = field(init=False, default=None)
    #: the Event for the current pause was recorded
    _brake_told: bool = field(init=False, default=False)
    #: uid -> node this operator labelled it with
    _placed: dict[str, str] = field(init=False, default_factory=dict)
    #: set by the runner; None: no pools considered
    pools: PoolController | None = field(init=False, default=None)

    # ---- feeding the queue
    def sandbox_changed(self, raw: dict[str, Any], source: Source = "watch") -> None:
        entry = self.cache.upsert_sandbox(raw, source)
        if entry is None:
            return
        self._settle_reservation(entry)
        if entry.finished:
            self.retry_unschedulable()
        self.queue.add(sandbox_key(raw))

    def sandbox_gone(self, raw: dict[str, Any]) -> None:
        entry = self.cache.forget_sandbox(raw)
        if entry is not None:
            self.ledger.release(entry.uid)
            self._finished_seen.pop(entry.uid, None)
            self._placed.pop(entry.uid, None)
            self._unschedulable.pop(sandbox_key(raw), None)
            self.retry_unschedulable()

    def retry_unschedulable(self) -> None:
        """Capacity or node shape changed: every waiting sandbox gets another look now."""
        for key in list(self._unschedulable):
            self.queue.add(key)

    def enqueue_all(self) -> None:
        for key in list(self.cache.sandboxes):
            self.queue.add(key)

    def reset(self) -> None:
        """Forget in-flight reservations (used when leadership changes hands)."""
        self.ledger.clear()

    def _settle_reservation(self, entry: SandboxEntry) -> None:
        reservation = self.ledger.get(entry.uid)
        if reservation is not None and entry.node == reservation.node:
            self.ledger.release(entry.uid)

    # ---- workers
    async def worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                if self.leading():
                    await self.reconcile(key)
                self.queue.forget(key)
            except ApiError as exc:
                self.metrics.reconcile_errors.labels(kind="api").inc()
                delay = self.queue.retry(key, at_least=exc.retry_after)
                log.warning("reconcile %s: %s (retry in %.1fs)", key, exc, delay)
            except Exception:
                self.metrics.reconcile_errors.labels(kind="bug").inc()
                log.exception("reconcile %s failed (retry in %.1fs)", key, self.queue.retry(key))
            finally:
                self.queue.done(key)

    async def sweep(self) -> None:
        """Node loss and TTLs depend on time passing, not on events: look at every sandbox periodically."""
        now = datetime.now(UTC)
        for key, entry in list(self.cache.sandboxes.items()):
            if entry.sandbox is None:
                continue
            step = self._next_step(entry, now)
            if step.action not in (lc.Action.NONE, lc.Action.WAIT_FOR_AGENT):
                self.queue.add(key)

    def phase_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for entry in self.cache.sandboxes.values():
            counts[entry.status.phase.value if entry.status.phase else "Pending"] += 1
        return dict(counts)

    def refresh_metrics(self) -> None:
        self.metrics.set_phases(self.phase_counts())
        self.metrics.unschedulable.set(len(self._unschedulable))

    # ---- time-dependent inputs
    def _next_step(self, entry: SandboxEntry, now: datetime) -> lc.Step:
        """The sweep and a reconcile judge a sandbox alike: its node's silence, its time finished
        and the eviction brake, as this operator sees them at ``now``."""
        assert entry.sandbox is not None
        return lc.next_step(
            entry.sandbox,
            silence=self._silence(entry.node, now),
            finished_for=self._finished_for(entry, now),
            config=self.config,
            evictions_paused=self._evictions_paused(now, entry),
        )

    def _evictions_paused(self, now: datetime, entry: SandboxEntry) -> str | None:
        """The brake: why no node may be declared lost now, or None.

        As Kubernetes' node lifecycle controller stops evicting when most of a zone is not
        ready, more than ``evictionBrakeShare`` of the nodes going silent together (each past
        ``agentAliveSeconds``, so nodes that fail a second apart count as one event) is taken
        for a fault of the API server or of this operator, not of the nodes. Engaging and
        releasing it is said once each in a log line and a metric, and engaging in an Event on
        the first sandbox of a silent node that meets it (its owner sees why it stays Unknown).
        """
        lost, considered = self.cache.unreachable_nodes(
            now, self.config.agent_alive_seconds, 2 * self.config.node_lost_grace_seconds
        )
        self.metrics.unreachable_nodes.set(len(lost))
        share = self.config.eviction_brake_share
        engaged = bool(lost) and share < 1 and len(lost) > share * len(considered)
        message = (
            f"evictions paused: {len(lost)} of {len(considered)} nodes look lost at once (more than "
            f"{share:.0%}); the API server or the operator is the likelier fault"
            if engaged
            else None
        )
        if (message is None) != (self._brake is None):
            self.metrics.evictions_paused.set(1 if message else 0)
            self._brake_told = False
            if message:
                log.warning("%s: %s", message, ", ".join(sorted(lost)))
            else:
                log.info("evictions resumed: %d of %d nodes lost", len(lost), len(considered))
        if message and not self._brake_told and entry.node in lost:
            self.events.record(entry.raw, EventReason.EVICTIONS_PAUSED, message, warning=True)
            self._brake_told = True
        self._brake = message
        return message

    def _silence(self, node: str | None, now: datetime) -> float | None:
        if node is None:
            return None
        age = self.cache.lease_age(node, now)
        if age is not None:
            self._silent_since.pop(node, None)
            return age
        since = self._silent_since.setdefault(node, time.monotonic())
        return time.monotonic() - since

    def _finished_for(self, entry: SandboxEntry, now: datetime) -> float | None:
        if not entry.finished:
            self._finished_seen.pop(entry.uid, None)
            return None
        status = entry.status
        stamps = [status.container.finished_at] if status.container and status.container.finished_at else []
        if not stamps:
            stamps = [c.last_transition_time for c in status.conditions or [] if c.last_transition_time]
        if stamps:
            return (now - max(s for s in stamps if s is not None)).total_seconds()
        seen = self._finished_seen.setdefault(entry.uid, time.monotonic())
        return time.monotonic() - seen

    # ---- one pass
    async def reconcile(self, key: str) -> None:
        entry = self.cache.sandboxes.get(key)
        if entry is None:
            return
        if entry.invalid is not None:
            if entry.raw["metadata"].get("deletionTimestamp"):
                await self._release(entry, force=False)
            else:
                await self._record_invalid(entry)
            return
        assert entry.sandbox is not None
        now = datetime.now(UTC)
        step = self._next_step(entry, now)
        if step.recheck is not None:
            self.queue.add_after(key, step.recheck)
        action = step.action
        if action is lc.Action.RELEASE:
            await self._release(entry, force=False)
        elif action is lc.Action.FORCE_RELEASE:
            await self._release(entry, force=True, why=step.message)
        elif action is lc.Action.WAIT_FOR_AGENT:
            return
        elif action is lc.Action.DELETE_EXPIRED:
            await self._delete_expired(entry, step.message)
        elif action is lc.Action.RESCHEDULE:
            await self._reschedule(entry, step.message)
        elif action is lc.Action.MARK_NODE_LOST:
            await self._mark_node_lost(entry, step.message)
        elif action is lc.Action.MARK_UNKNOWN:
            await self._mark_unknown(entry, step.message)
        elif action is lc.Action.RECOVER:
            await self._recover(entry, step.message)
        elif entry.finished or entry.raw["metadata"].get("deletionTimestamp"):
            return
        elif entry.node is not None:
            problem = self._unrecorded_placement(entry, now)
            if problem is None:
                await self._complete_placement(entry)
            else:
                await self._refuse_placement(entry, problem)
        elif entry.uid in self.ledger:
            return  # our own placement is in flight; its write will requeue the key
        else:
            await self._schedule(entry)

    # ---- writes (each one a compare-and-swap; a lost one refreshes the cache and requeues)
    async def _write(self, entry: SandboxEntry, ops: list[dict[str, Any]], sub: str | None = None) -> bool:
        meta = entry.raw["metadata"]
        path = sandbox_path(meta["namespace"], meta["name"], sub)
        try:
            obj = await self.client.json_patch(path, ops)
        except ApiError as exc:
            if exc.not_found:
                self.sandbox_gone(entry.raw)
                return False
            if not exc.conflict:
                raise
            self.metrics.conflicts.inc()
            await self._refresh(entry)
            return False
        self.sandbox_changed(obj, "own")
        return True

    async def _refresh(self, entry: SandboxEntry) -> None:
        meta = entry.raw["metadata"]
        try:
            obj = await self.client.get(sandbox_path(meta["namespace"], meta["name"]))
        except ApiError as exc:
            if exc.not_found:
                self.sandbox_gone(entry.raw)
                return
            raise
        self.sandbox_changed(obj, "own")
        self.queue.add(sandbox_key(obj))

    async def _write_status(self, entry: SandboxEntry, status: VMSandboxStatus) -> bool:
        return await self._write(entry, _status_ops(entry.raw, status), sub="status")

    async def _record_invalid(self, entry: SandboxEntry) -> None:
        assert entry.invalid is not None
        raw_status = entry.raw.get("status") or {}
        message = str(entry.invalid.detail)
        if raw_status.get("reason") == lc.REASON_INVALID and raw_status.get("message") == message:
            return
        try:
            status = VMSandboxStatus.model_validate(raw_status)
        except ValueError:
            status = VMSandboxStatus()
        status.phase = Phase.FAILED
        status.reason = lc.REASON_INVALID
        status.message = message
        status.set_condition(ConditionType.SCHEDULED, ConditionStatus.FALSE, lc.REASON_INVALID, message)
        if await self._write_status(entry, status):
            self.events.record(
                entry.raw, lc.REASON_INVALID, f"{entry.invalid.field}: {message}", warning=True
            )

    async def _schedule(self, entry: SandboxEntry) -> None:
        assert entry.sandbox is not None
        key = sandbox_key(entry.raw)
        now = datetime.now(UTC)
        claim = self.pools.decide(entry.sandbox, now) if self.pools is not None else None
        decision = claim.decision if claim is not None else self._decide(entry, now)
        if not isinstance(decision, Placement):
            await self._record_unschedulable(entry, decision.message)
            return
        # Counted from here on, before any await: concurrent passes see this capacity as taken.
        self.ledger.reserve(entry.uid, decision.node, entry.demand)
        meta = entry.raw["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        ops: list[dict[str, Any]] = [same_object(meta)]
        if meta.get("labels"):
            ops += [
                expect(pointer("metadata", "labels", NODE_LABEL), None),
                {"op": "add", "path": pointer("metadata", "labels", NODE_LABEL), "value": decision.node},
            ]
        else:
            ops += [
                expect("/metadata/labels", meta.get("labels")),
                {"op": "add", "path": "/metadata/labels", "value": {NODE_LABEL: decision.node}},
            ]
        if entry.sandbox.spec.pool:  # what the pool's status.selector selects
            ops.append(
                {
                    "op": "add",
                    "path": pointer("metadata", "labels", POOL_LABEL),
                    "value": entry.sandbox.spec.pool,
                }
            )
        if OPERATOR_FINALIZER not in finalizers:
            ops += [
                expect("/metadata/finalizers", meta.get("finalizers")),
                {"op": "add", "path": "/metadata/finalizers", "value": [*finalizers, OPERATOR_FINALIZER]},
            ]
        placed = False
        try:
            placed = await self._write(entry, ops)
        finally:
            if not placed:
                self.ledger.release(entry.uid)
        if not placed:
            return
        self._placed[entry.uid] = decision.node
        elapsed = time.monotonic() - entry.first_seen
        self.metrics.scheduling_latency.observe(elapsed)
        self.metrics.scheduled.inc()
        if claim is not None and self.pools is not None:
            self.pools.metrics.claim(claim.start)
        self._unschedulable.pop(key, None)
        self.events.record(
            entry.raw,
            lc.REASON_SCHEDULED,
            f"placed on node {decision.node} ({decision.hypervisor})" + (claim.note if claim else ""),
            hold=True,  # every sandbox's: it must not compete with the placements
        )
        fresh = self.cache.sandboxes.get(key)
        if fresh is not None:
            await self._complete_placement(fresh, hypervisor=decision.hypervisor, elapsed=elapsed)

    def _decide(self, entry: SandboxEntry, now: datetime) -> Placement | Unschedulable:
        assert entry.sandbox is not None
        return decide(
            entry.sandbox,
            self.cache.node_views().values(),
            self.cache.usage(self.ledger),
            now=now,
            alive_window=self.config.agent_alive_seconds,
            strategy=self.config.strategy,
        )

    async def _complete_placement(
        self, entry: SandboxEntry, *, hypervisor: str | None = None, elapsed: float | None = None
    ) -> None:
        """Write the status half of a placement; also finishes one a previous operator left half-done."""
        node = entry.node
        assert node is not None
        status = entry.status.model_copy(deep=True)
        phase = status.phase
        if status.node_name == node and phase not in (None, Phase.PENDING):
            return
        if phase in (None, Phase.PENDING):
            status.phase = Phase.SCHEDULED
            status.reason = None
            status.message = None
        status.node_name = node
        if hypervisor is not None and status.hypervisor is None:
            status.hypervisor = hypervisor
        if status.network is None and entry.sandbox is not None:
            asked = entry.sandbox.spec.network.mode if entry.sandbox.spec.network else None
            status.network = NetworkStatus(mode=asked or self.config.default_network_mode)
        status.set_condition(
            ConditionType.SCHEDULED, ConditionStatus.TRUE, lc.REASON_SCHEDULED, f"node {node}"
        )
        if elapsed is not None:
            timings = status.boot_timings or BootTimings()
            timings.schedule = round(elapsed * 1000, 3)
            status.boot_timings = timings
        await self._write_status(entry, status)

    def _unrecorded_placement(self, entry: SandboxEntry, now: datetime) -> str | None:
        """Why the sandbox's node label is not a placement to complete; None when it is one."""
        assert entry.sandbox is not None and entry.node is not None
        node, recorded = entry.node, entry.status.node_name
        field = f'metadata.labels["{NODE_LABEL}"]'
        if self._placed.get(entry.uid) == node or recorded == node:
            return None
        if recorded:
            return f"{field}: {node!r} is not the node the operator placed the sandbox on ({recorded!r})"
        view = self.cache.node_views().get(node)
        if view is None:
            reasons = ["no node with a vmsandbox agent has this name"]
        else:
            used = self.cache.usage(self.ledger, without=entry.uid).get(node, NOTHING)
            if self.pools is not None:  # booted pool members hold room too
                used = used + self.pools.members(now).get(node, NOTHING)
            reasons, _ = why_not(view, entry.sandbox, used, now, self.config.agent_alive_seconds)
        if not reasons:
            return None  # a placement a previous operator decided and did not finish recording
        return (
            f"{field}: node {node!r} was not chosen by the operator and cannot take this sandbox "
            f"({', '.join(reasons)})"
        )

    async def _refuse_placement(self, entry: SandboxEntry, message: str) -> None:
        status = entry.status.model_copy(deep=True)
        if status.phase is Phase.FAILED and status.reason == lc.REASON_INVALID and status.message == message:
            return
        await self._not_scheduled(entry, Phase.FAILED, lc.REASON_INVALID, message, lc.REASON_INVALID)

    async def _not_scheduled(
        self, entry: SandboxEntry, phase: Phase, reason: StatusReason, message: str, event: str
    ) -> None:
        """Write why ``entry`` is not placed (phase, reason, the Scheduled condition), and tell
        it in a Warning Event once the write took effect."""
        status = entry.status.model_copy(deep=True)
        status.phase = phase
        status.reason = reason
        status.message = message
        status.set_condition(ConditionType.SCHEDULED, ConditionStatus.FALSE, reason, message)
        if await self._write_status(entry, status):
            self.events.record(entry.raw, event, message, warning=True)

    async def _record_unschedulable(self, entry: SandboxEntry, message: str) -> None:
        key = sandbox_key(entry.raw)
        attempts = self._unschedulable.get(key, 0) + 1
        self._unschedulable[key] = attempts
        self.metrics.unschedulable_decisions.inc()
        delay = min(
            self.config.unschedulable_backoff_seconds * 2 ** (attempts - 1),
            self.config.unschedulable_backoff_max_seconds,
        )
        self.queue.add_after(key, delay)
        status = entry.status
        cond = status.condition(ConditionType.SCHEDULED)
        if (
            status.phase is Phase.PENDING
            and status.reason == lc.REASON_UNSCHEDULABLE
            and cond is not None
            and cond.message == message
        ):
            return
        reason = lc.REASON_UNSCHEDULABLE
        await self._not_scheduled(entry, Phase.PENDING, reason, message, EventReason.FAILED_SCHEDULING)

    async def _mark_unknown(self, entry: SandboxEntry, message: str) -> None:
        status = entry.status.model_copy(deep=True)
        status.phase = Phase.UNKNOWN
        status.reason = lc.REASON_NODE_UNREACHABLE
        status.message = message
        if await self._write_status(entry, status):
            self.events.record(entry.raw, lc.REASON_NODE_UNREACHABLE, message, warning=True)

    async def _recover(self, entry: SandboxEntry, message: str) -> None:
        status = entry.status.model_copy(deep=True)
        status.phase = _phase_from_conditions(status)
        status.reason = None
        status.message = None
        if await self._write_status(entry, status):
            self.events.record(entry.raw, EventReason.NODE_RECOVERED, message)

    async def _mark_node_lost(self, entry: SandboxEntry, message: str) -> None:
        status = entry.status.model_copy(deep=True)
        status.phase = Phase.FAILED
        status.reason = lc.REASON_NODE_LOST
        status.message = message
        status.set_condition(ConditionType.READY, ConditionStatus.FALSE, lc.REASON_NODE_LOST, message)
        if await self._write_status(entry, status):
            self.metrics.node_lost.inc()
            self.events.record(entry.raw, lc.REASON_NODE_LOST, message, warning=True)

    async def _reschedule(self, entry: SandboxEntry, message: str) -> None:
        """Back to Pending: drop the lost node's label and its agent's claim, then the status."""
        meta = entry.raw["metadata"]
        node = entry.node or entry.status.node_name
        if entry.node is not None:
            finalizers = [f for f in meta.get("finalizers") or [] if f != AGENT_FINALIZER]
            ops = [
                same_object(meta),
                expect(pointer("metadata", "labels", NODE_LABEL), entry.node),
                {"op": "remove", "path": pointer("metadata", "labels", NODE_LABEL)},
                expect("/metadata/finalizers", meta.get("finalizers")),
                {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
            ]
            if not await self._write(entry, ops):
                return
        fresh = self.cache.sandboxes.get(sandbox_key(entry.raw))
        if fresh is None:
            return
        status = fresh.status.model_copy(deep=True)
        status.phase = Phase.PENDING
        status.reason = "Rescheduling"
        status.message = message
        status.node_name = None
        status.vm = None
        status.container = None
        status.restart_count = (status.restart_count or 0) + 1
        status.set_condition(ConditionType.SCHEDULED, ConditionStatus.FALSE, "Rescheduling", message)
        for kind in (ConditionType.VM_READY, ConditionType.CONTAINER_READY, ConditionType.READY):
            status.set_condition(kind, ConditionStatus.FALSE, lc.REASON_NODE_LOST, f"node {node} lost")
        if await self._write_status(fresh, status):
            self.metrics.reschedules.inc()
            self.events.record(entry.raw, EventReason.RESCHEDULED, f"leaving lost node {node}: {message}")

    async def _delete_expired(self, entry: SandboxEntry, message: str) -> None:
        meta = entry.raw["metadata"]
        try:
            await self.client.delete(
                sandbox_path(meta["namespace"], meta["name"]), precondition_uid=meta["uid"]
            )
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise
            return
        self.events.record(entry.raw, EventReason.EXPIRED, message)

    async def _release(self, entry: SandboxEntry, *, force: bool, why: str = "") -> None:
        meta = entry.raw["metadata"]
        drop = {OPERATOR_FINALIZER, AGENT_FINALIZER} if force else {OPERATOR_FINALIZER}
        current = list(meta.get("finalizers") or [])
        keep = [f for f in current if f not in drop]
        if keep == current:
            return
        if await self._write(entry, set_finalizers(entry.raw, keep)) and force:
            self.events.record(entry.raw, EventReason.FORCE_RELEASED, why, warning=True)
