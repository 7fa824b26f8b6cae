"""Pools as the operator sees them: each node's share, booted members' capacity, warm nodes for claims.

Pure functions of the cached pools, node views, agents' reports and placements, so the spread
and the claim preference are tested without an API server. Members are not objects: what a
node holds is what its agent reports in the Node annotation ``vmsandbox.io/pools``.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from vmsandbox.api import VMSandbox, VMSandboxSpec
from vmsandbox.api.constants import POOL_LABEL, POOLS_ANNOTATION
from vmsandbox.api.pool import (
    PoolConditionType,
    PoolMode,
    PoolNodeStatus,
    PoolReport,
    PoolTemplate,
    VMSandboxPool,
    VMSandboxPoolStatus,
    parse_pool_reports,
)
from vmsandbox.api.reasons import StatusReason
from vmsandbox.api.status import ConditionStatus, ConditionType
from vmsandbox.operator.nodes import NodeView
from vmsandbox.operator.scheduling import NOTHING, Demand, why_not

#: Node -> (pool ref -> what the node's agent reports for it).
Reports = Mapping[str, Mapping[str, PoolReport]]


def template_sandbox(pool: VMSandboxPool) -> VMSandbox:
    """A sandbox of the template's shape, so members pass the very filter sandboxes pass."""
    t = pool.spec.template
    spec = VMSandboxSpec.model_construct(
        image="pool-member",
        resources=t.resources,
        hypervisor=t.hypervisor,
        node_selector=t.node_selector,
        tolerations=t.tolerations,
        network=t.network,
    )
    return VMSandbox.model_construct(metadata=pool.metadata, spec=spec)


def member_demand(template: PoolTemplate) -> Demand:
    return Demand(template.resources.vcpus, template.resources.memory_mib)


def _room(
    node: NodeView,
    member: VMSandbox,
    used: Demand,
    need: Demand | None,
    *,
    now: datetime,
    window: float,
    most: int,
) -> int:
    """How many members ``node`` can take (at most ``most``): none where a member could never run
    (agent, selector, taints, backend, size); booted ones (``need`` given) only as many as fit
    beside ``used``."""
    reasons, hypervisor = why_not(node, member, NOTHING, now, window)
    if reasons or hypervisor is None or node.capacity is None:
        return 0
    if need is None:
        return most
    free_cpu = node.capacity.vcpus - used.vcpus
    free_mem = node.capacity.memory_mib - used.memory_mib
    return max(0, min(most, free_cpu // need.vcpus, free_mem // need.memory_mib))


def shares(
    pool: VMSandboxPool,
    nodes: Iterable[NodeView],
    usage: Mapping[str, Demand],
    *,
    now: datetime,
    alive_window: float,
) -> dict[str, int]:
    """Each eligible node's share of ``spec.replicas``, spread evenly (fewest first, then by name).

    A booted member is placed only where it fits beside ``usage``; a snapshot pool holds no
    guest memory, so any eligible node big enough for one member takes any share.
    """
    member = template_sandbox(pool)
    need = member_demand(pool.spec.template) if pool.spec.mode is PoolMode.BOOTED else None
    wanted = pool.spec.replicas
    room = {
        v.name: _room(v, member, usage.get(v.name, NOTHING), need, now=now, window=alive_window, most=wanted)
        for v in nodes
    }
    heap = [(0, name) for name, n in room.items() if n > 0]
    heapq.heapify(heap)
    out: dict[str, int] = {}
    for _ in range(wanted):
        if not heap:
            break
        count, name = heapq.heappop(heap)
        out[name] = count + 1
        if count + 1 < room[name]:
            heapq.heappush(heap, (count + 1, name))
    return out


@dataclass(frozen=True)
class Plan:
    """Every pool's shares, and the capacity booted members hold on each node."""

    shares: Mapping[str, Mapping[str, int]]  # pool ref -> node -> desired
    members: Mapping[str, Demand]  # node -> demand of booted members


def plan(
    pools: Iterable[VMSandboxPool],
    nodes: Iterable[NodeView],
    usage: Mapping[str, Demand],
    *,
    now: datetime,
    alive_window: float,
) -> Plan:
    """Shares of all pools, oldest first (by creation, then name): each pool's booted members take
    room the next pool no longer sees, so two pools never count the same free capacity."""
    views = list(nodes)
    used = dict(usage)
    members: dict[str, Demand] = {}
    out: dict[str, dict[str, int]] = {}

    def age(p: VMSandboxPool) -> tuple[str, str]:
        created = p.metadata.creation_timestamp
        return (created.isoformat() if created else "", p.ref)

    for pool in sorted(pools, key=age):
        share = shares(pool, views, used, now=now, alive_window=alive_window)
        out[pool.ref] = share
        if pool.spec.mode is PoolMode.BOOTED:
            need = member_demand(pool.spec.template)
            for node, n in share.items():
                extra = Demand(need.vcpus * n, need.memory_mib * n)
                used[node] = used.get(node, NOTHING) + extra
                members[node] = members.get(node, NOTHING) + extra
    return Plan(shares=out, members=members)


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> Mapping[str, PoolReport]:
    """Parsed once per distinct annotation text: a decision reads every node's, and few change."""
    return MappingProxyType(parse_pool_reports(text))


def reports_of(nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, PoolReport]]:
    """Each node's pool reports, from its ``vmsandbox.io/pools`` annotation."""
    out: dict[str, Mapping[str, PoolReport]] = {}
    for name, raw in nodes.items():
        text = ((raw.get("metadata") or {}).get("annotations") or {}).get(POOLS_ANNOTATION)
        if text:
            out[name] = _parsed(text)
    return out


def ready_by_node(pool: VMSandboxPool, reports: Reports) -> dict[str, int]:
    """Ready members per node, counting only reports made for this pool's uid (not a namesake's)."""
    out: dict[str, int] = {}
    for node, by_pool in reports.items():
        report = by_pool.get(pool.ref)
        if report is not None and report.uid == pool.metadata.uid and report.ready > 0:
            out[node] = report.ready
    return out


def in_flight(sandbox: VMSandbox) -> bool:
    """A claim placed on a node whose agent has not yet said whether a member served it."""
    status = sandbox.status
    if sandbox.spec.pool is None or (status.phase is not None and status.phase.finished):
        return False
    return status.condition(ConditionType.WARM_START) is None


def claims_in_flight(placed: Iterable[tuple[VMSandbox, str | None]], pool_ref: str) -> dict[str, int]:
    """Claims on ``pool_ref`` per node still waiting to take a member; ``placed`` holds (sandbox, node)."""
    out: dict[str, int] = {}
    for sandbox, node in placed:
        ref = f"{sandbox.metadata.namespace}/{sandbox.spec.pool}"
        if node and ref == pool_ref and in_flight(sandbox):
            out[node] = out.get(node, 0) + 1
    return out


def warm_nodes(ready: Mapping[str, int], claims: Mapping[str, int]) -> dict[str, int]:
    """Nodes with a member no claim is on its way to: ready minus claims in flight, when positive."""
    return {node: n - claims.get(node, 0) for node, n in ready.items() if n - claims.get(node, 0) > 0}


def pool_ref(sandbox: VMSandbox) -> str | None:
    return f"{sandbox.metadata.namespace}/{sandbox.spec.pool}" if sandbox.spec.pool else None


def claim_credit(pool: VMSandboxPool, members: Mapping[str, Demand], node: str) -> Mapping[str, Demand]:
    """``members`` less one booted member on ``node``: the claim takes that member's place."""
    if pool.spec.mode is not PoolMode.BOOTED or node not in members:
        return members
    need = member_demand(pool.spec.template)
    held = members[node]
    return {
        **members,
        node: Demand(max(0, held.vcpus - need.vcpus), max(0, held.memory_mib - need.memory_mib)),
    }


def pool_status(
    pool: VMSandboxPool, desired: Mapping[str, int], ready: Mapping[str, int], problem: str | None = None
) -> VMSandboxPoolStatus:
    """The status the operator writes: per-node shares and reports, their sums, and Ready.

    ``problem``: why the template may not run on this cluster (the pool then gets no shares).
    """
    old = pool.status
    names = sorted(set(desired) | set(ready))
    nodes = [PoolNodeStatus(name=n, desired=desired.get(n, 0), ready=ready.get(n, 0)) for n in names]
    placed, ready_total, wanted = sum(desired.values()), sum(ready.values()), pool.spec.replicas
    status = VMSandboxPoolStatus(
        replicas=placed,
        ready_replicas=ready_total,
        selector=f"{POOL_LABEL}={pool.metadata.name}",
        observed_generation=pool.metadata.generation,
        nodes=nodes,
        conditions=old.conditions,
    )
    if problem is not None:
        status.set_condition(
            PoolConditionType.READY,
            ConditionStatus.FALSE,
            StatusReason.INVALID,
            problem,
            pool.metadata.generation,
        )
    elif placed < wanted:
        status.set_condition(
            PoolConditionType.READY,
            ConditionStatus.FALSE,
            StatusReason.INSUFFICIENT_CAPACITY,
            f"{placed} of {wanted} members fit on the nodes the template allows",
            pool.metadata.generation,
        )
    elif sum(min(ready.get(n, 0), d) for n, d in desired.items()) < placed:
        paused = pool.spec.paused
        status.set_condition(
            PoolConditionType.READY,
            ConditionStatus.FALSE,
            StatusReason.PAUSED if paused else StatusReason.MEMBERS_STARTING,
            f"{ready_total} of {placed} members ready"
            + ("; none is made while spec.paused is true" if paused else ""),
            pool.metadata.generation,
        )
    else:
        status.set_condition(
            PoolConditionType.READY,
            ConditionStatus.TRUE,
            StatusReason.MEMBERS_READY,
            f"{ready_total} of {wanted} members ready",
            pool.metadata.generation,
        )
    return status


def same_status(a: VMSandboxPoolStatus, b: VMSandboxPoolStatus) -> bool:
    """Equal but for condition transition times (which a rewrite would only refresh)."""

    def strip(s: VMSandboxPoolStatus) -> dict[str, Any]:
        wire = s.to_wire()
        for cond in wire.get("conditions") or []:
            cond.pop("lastTransitionTime", None)
        return wire

    return strip(a) == strip(b)
