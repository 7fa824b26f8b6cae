"""The pool controller: writes each pool's shares and the agents' ready counts into its status.

Level-triggered like the reconciler: any pool, node or sandbox change marks the pools dirty,
and one loop recomputes every pool's plan from the cache and writes the statuses that differ
(only while leading). Scheduling counts booted members with the plan of the latest pass, the
shares the agents were last told to keep, so the desired counts the agents read and the
capacity the scheduler leaves free never disagree (and a decision does not pay for a plan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from vmsandbox.api import InvalidSandbox, VMSandbox
from vmsandbox.api.constants import API_VERSION, KIND
from vmsandbox.api.pool import VMSandboxPool
from vmsandbox.kube import ApiError
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.patches import same_object
from vmsandbox.kube.paths import pool_path
from vmsandbox.operator.admission import admit
from vmsandbox.operator.cache import ClusterCache
from vmsandbox.operator.claims import ClaimDecision, Start, place
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.pools import Plan, plan, pool_status, ready_by_node, reports_of, same_status
from vmsandbox.operator.scheduling import Demand, ReservationLedger

log = logging.getLogger("vmsandbox.operator")


def template_problem(pool: VMSandboxPool, config: OperatorConfig) -> str | None:
    """The operator's admission rules, applied to the template as to a sandbox's same fields
    (allowed hypervisors, label and toleration syntax); None when members may run here."""
    spec = {"image": "pool-member", **pool.spec.template.to_wire()}
    raw = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": pool.metadata.name}, "spec": spec}
    try:
        admit(raw, config)
    except InvalidSandbox as exc:
        return "; ".join(f"{path.replace('spec.', 'spec.template.', 1)}: {msg}" for path, msg in exc.problems)
    return None


class PoolMetrics:
    """Pool gauges and claim outcomes, in the operator's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["namespace", "pool"]
        self.desired = Gauge(
            "vmsandbox_operator_pool_desired_members",
            "Members the operator asked the nodes to keep (sum of status.nodes[].desired).",
            labels,
            registry=registry,
        )
        self.ready = Gauge(
            "vmsandbox_operator_pool_ready_members",
            "Members the agents report ready (status.readyReplicas).",
            labels,
            registry=registry,
        )
        self.claims = Counter(
            "vmsandbox_operator_pool_claims_scheduled",
            "Sandboxes naming a pool, by how they were placed: warm (on a node with a ready member "
            "not spoken for) or cold (pool missing, empty, or of another shape).",
            ["start"],
            registry=registry,
        )

    def set_pools(self, values: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        """(namespace, pool) -> (desired, ready); series of pools gone are dropped."""
        self.desired.clear()
        self.ready.clear()
        for (namespace, name), (desired, ready) in values.items():
            self.desired.labels(namespace=namespace, pool=name).set(desired)
            self.ready.labels(namespace=namespace, pool=name).set(ready)

    def claim(self, start: Start) -> None:
        if start is not Start.NO_POOL:
            self.claims.labels(start=start.value).inc()


@dataclass(eq=False, repr=False)
class PoolController:
    config: OperatorConfig
    client: AsyncClient
    cache: ClusterCache
    ledger: ReservationLedger
    metrics: PoolMetrics
    leading: Callable[[], bool]
    capacity_changed: Callable[[], None]
    _dirty: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _members: Mapping[str, Demand] = field(init=False, default_factory=dict)
    #: The latest pass's plan, what the agents were told.
    _last: Plan | None = field(init=False, default=None)

    # ---- inputs
    def changed(self) -> None:
        self._dirty.set()

    def pool_changed(self, raw: dict[str, Any]) -> None:
        self.cache.upsert_pool(raw)
        self.changed()

    def pool_gone(self, raw: dict[str, Any]) -> None:
        self.cache.forget_pool(raw)
        self.changed()

    async def resync(self) -> None:
        """A fresh LIST when this replica starts leading; the plan is redone from it."""
        self._last = None
        self.cache.begin_list("pool")
        try:
            seen = {pool.ref for pool in await self._listed_pools()}
        finally:
            self.cache.end_list("pool")
        for ref in set(self.cache.pools) - seen:
            self.cache.pools.pop(ref, None)
        self.changed()

    async def _listed_pools(self) -> list[VMSandboxPool]:
        try:
            listed = await self.client.list_objects(pool_path())
        except ApiError as exc:
            if not exc.not_found:
                raise
            # The VMSandboxPool CRD is not installed (Helm never upgrades CRDs): sandboxes
            # are scheduled as before, and pools are picked up once it is applied.
            log.warning("no VMSandboxPool API (apply crds/vmsandboxpools.yaml): %s", exc)
            return []
        stored = (self.cache.upsert_pool(item, "list") for item in listed.get("items") or [])
        return [pool for pool in stored if pool is not None]

    # ---- the plan scheduling and status share
    def valid_pools(self) -> list[VMSandboxPool]:
        return [p for p in self.cache.pools.values() if template_problem(p, self.config) is None]

    def plan(self, now: datetime | None = None) -> Plan:
        usage = self.cache.usage(self.ledger)
        return plan(
            self.valid_pools(),
            self.cache.node_views().values(),
            usage,
            now=now or datetime.now(UTC),
            alive_window=self.config.agent_alive_seconds,
        )

    def placed(self) -> Iterator[tuple[VMSandbox, str | None]]:
        """(sandbox, node) of each known sandbox; a placement in flight counts on its reserved node.

        Lazy: a decision for a sandbox that names no pool never walks the cluster."""
        for entry in list(self.cache.sandboxes.values()):
            if entry.sandbox is not None:
                reservation = self.ledger.get(entry.uid)
                yield entry.sandbox, reservation.node if reservation else entry.node

    def members(self, now: datetime | None = None) -> Mapping[str, Demand]:
        """Capacity booted members hold per node, as of the latest pass (or now, before the first)."""
        if self._last is None:
            self._last = self.plan(now)
        return self._last.members

    def decide(self, sandbox: VMSandbox, now: datetime) -> ClaimDecision:
        """Scheduling with pools: members counted, claims sent where a member is ready."""
        usage = self.cache.usage(self.ledger)
        views = self.cache.node_views().values()
        window = self.config.agent_alive_seconds
        return place(
            sandbox,
            views,
            usage,
            self.members(now),
            self.cache.pools,
            reports_of(self.cache.nodes),
            self.placed(),
            now=now,
            alive_window=window,
            strategy=self.config.strategy,
            default_mode=self.config.default_network_mode,
        )

    # ---- the loop
    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.config.sweep_seconds)
            await asyncio.sleep(0.05)  # let a burst of events settle into one pass
            self._dirty.clear()
            if not self.leading():
                continue
            try:
                await self.sync()
            except ApiError as exc:
                log.warning("pool status: %s", exc)
                self._dirty.set()
            except Exception:
                log.exception("pool controller pass failed")

    async def sync(self) -> None:
        """One pass: plan, metrics, and a status write for each pool whose status differs."""
        current = self._last = self.plan()
        if current.members != self._members:
            self._members = current.members
            self.capacity_changed()  # freed (or taken) room may fit a waiting sandbox now
        reports = reports_of(self.cache.nodes)
        values: dict[tuple[str, str], tuple[int, int]] = {}
        for ref, pool in list(self.cache.pools.items()):
            desired = current.shares.get(ref, {})
            ready = ready_by_node(pool, reports)
            status = pool_status(pool, desired, ready, template_problem(pool, self.config))
            values[(str(pool.metadata.namespace), str(pool.metadata.name))] = (
                status.replicas or 0,
                status.ready_replicas or 0,
            )
            if not same_status(status, pool.status):
                await self._write(pool, status.to_wire())
        self.metrics.set_pools(values)

    async def _write(self, pool: VMSandboxPool, status: dict[str, Any]) -> None:
        meta = pool.metadata
        ops: list[dict[str, Any]] = [
            same_object({"uid": meta.uid}),
            {"op": "add", "path": "/status", "value": status},
        ]
        try:
            obj = await self.client.json_patch(pool_path(meta.namespace, meta.name, "status"), ops)
        except ApiError as exc:
            if exc.not_found:
                self.cache.forget_pool(
                    {"metadata": {"namespace": meta.namespace, "name": meta.name, "uid": meta.uid}}
                )
                return
            if exc.conflict:  # a namesake replaced it; its own events bring it in
                await self.resync()
                return
            raise
        self.cache.upsert_pool(obj, "own")
