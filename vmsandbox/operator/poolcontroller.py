"""The pool controller: writes each pool's shares and the agents' ready counts into its status.

Level-triggered like the reconciler: any pool, node or sandbox change marks the pools dirty,
and one loop recomputes every pool's plan from the cache and writes the statuses that differ
(only while leading). The same plan is what scheduling counts booted members with, so the
desired counts the agents read and the capacity the scheduler leaves free never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from prometheus_client import CollectorRegistry, Counter, Gauge

from vmsandbox.api import VMSandbox
from vmsandbox.api.constants import GROUP, POOL_PLURAL, VERSION
from vmsandbox.api.pool import VMSandboxPool
from vmsandbox.operator.cache import ClusterCache
from vmsandbox.operator.claims import ClaimDecision, Start, place
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.kube import ApiError, KubeClient
from vmsandbox.operator.pools import Plan, plan, pool_status, ready_by_node, reports_of, same_status
from vmsandbox.operator.scheduling import Demand, ReservationLedger, usage_by_node

log = logging.getLogger("vmsandbox.operator")


def pool_path(namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{POOL_PLURAL}"
    if name is not None:
        path += f"/{quote(name)}"
    return path + (f"/{sub}" if sub else "")


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


class PoolController:
    def __init__(
        self,
        config: OperatorConfig,
        client: KubeClient,
        cache: ClusterCache,
        ledger: ReservationLedger,
        metrics: PoolMetrics,
        leading: Callable[[], bool],
        capacity_changed: Callable[[], None],
    ) -> None:
        self.config = config
        self.client = client
        self.cache = cache
        self.ledger = ledger
        self.metrics = metrics
        self.leading = leading
        self.capacity_changed = capacity_changed
        self._dirty = asyncio.Event()
        self._members: Mapping[str, Demand] = {}

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
        listed = await self.client.list_objects(pool_path())
        seen = set()
        for item in listed.get("items") or []:
            pool = self.cache.upsert_pool(item)
            if pool is not None:
                seen.add(pool.ref)
        for ref in set(self.cache.pools) - seen:
            self.cache.pools.pop(ref, None)
        self.changed()

    # ---- the plan scheduling and status share
    def plan(self, now: datetime | None = None) -> Plan:
        usage = usage_by_node(self.cache.placements(), self.ledger)
        return plan(
            self.cache.pools.values(),
            self.cache.node_views().values(),
            usage,
            now=now or datetime.now(UTC),
            alive_window=self.config.agent_alive_seconds,
        )

    def placed(self) -> list[tuple[VMSandbox, str | None]]:
        """(sandbox, node) of each known sandbox; a placement in flight counts on its reserved node."""
        out: list[tuple[VMSandbox, str | None]] = []
        for entry in self.cache.sandboxes.values():
            if entry.sandbox is not None:
                reservation = self.ledger.get(entry.uid)
                out.append((entry.sandbox, reservation.node if reservation else entry.node))
        return out

    def decide(self, sandbox: VMSandbox, now: datetime) -> ClaimDecision:
        """Scheduling with pools: members counted, claims sent where a member is ready."""
        usage = usage_by_node(self.cache.placements(), self.ledger)
        views = self.cache.node_views().values()
        window = self.config.agent_alive_seconds
        return place(
            sandbox,
            views,
            usage,
            plan(self.cache.pools.values(), views, usage, now=now, alive_window=window),
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
        current = self.plan()
        if current.members != self._members:
            self._members = current.members
            self.capacity_changed()  # freed (or taken) room may fit a waiting sandbox now
        reports = reports_of(self.cache.nodes)
        values: dict[tuple[str, str], tuple[int, int]] = {}
        for ref, pool in list(self.cache.pools.items()):
            desired = current.shares.get(ref, {})
            ready = ready_by_node(pool, reports)
            status = pool_status(pool, desired, ready)
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
            {"op": "test", "path": "/metadata/uid", "value": meta.uid},
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
        self.cache.upsert_pool(obj)
