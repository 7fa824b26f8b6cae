"""Choosing a node for a sandbox: filter, score, and a ledger of placements not yet seen in the cache.

The decision is a pure function of the node views, the resources already placed on each node
and the sandbox, so it is tested without an API server. The ledger is what keeps 100
sandboxes arriving at once from being placed on capacity only one of them fits: a placement
counts from the moment it is decided, not from the moment the watch cache shows it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from vmsandbox.api import VMSandbox
from vmsandbox.operator.config import Strategy
from vmsandbox.operator.nodes import HARD_EFFECTS, NodeView


@dataclass(frozen=True)
class Demand:
    vcpus: int
    memory_mib: int

    def __add__(self, other: Demand) -> Demand:
        return Demand(self.vcpus + other.vcpus, self.memory_mib + other.memory_mib)

    def __sub__(self, other: Demand) -> Demand:
        return Demand(self.vcpus - other.vcpus, self.memory_mib - other.memory_mib)


NOTHING = Demand(0, 0)


def demand_of(sandbox: VMSandbox) -> Demand:
    return Demand(sandbox.spec.resources.vcpus, sandbox.spec.resources.memory_mib)


@dataclass(frozen=True)
class Placement:
    node: str
    hypervisor: str
    score: float


@dataclass(frozen=True)
class Unschedulable:
    """No node fits; ``message`` groups nodes by why, e.g. ``3 nodes: insufficient memory``."""

    message: str
    reasons: Mapping[str, int]


def _selector_matches(node: NodeView, selector: Mapping[str, str] | None) -> bool:
    return all(node.labels.get(k) == v for k, v in (selector or {}).items())


def untolerated_taints(node: NodeView, sandbox: VMSandbox) -> list[str]:
    tolerations = sandbox.spec.tolerations or []
    return [
        taint.describe()
        for taint in node.taints
        if taint.effect in HARD_EFFECTS
        and not any(t.tolerates(taint.key, taint.value, taint.effect) for t in tolerations)
    ]


def why_not(
    node: NodeView, sandbox: VMSandbox, used: Demand, now: datetime, alive_window: float
) -> tuple[list[str], str | None]:
    """Every reason ``node`` cannot take ``sandbox`` (empty when it can) and the hypervisor it would use."""
    if not node.agent_alive(now, alive_window):
        return ["agent not ready"], None
    if node.capacity is None:
        return [node.capacity_error or "no capacity published"], None
    reasons: list[str] = []
    if not _selector_matches(node, sandbox.spec.node_selector):
        reasons.append("node selector mismatch")
    reasons.extend(untolerated_taints(node, sandbox))
    wanted = sandbox.spec.hypervisor.value if sandbox.spec.hypervisor else node.capacity.default_hypervisor
    hypervisor: str | None = None
    if wanted is None:
        reasons.append("no default hypervisor")
    elif wanted not in node.capacity.hypervisors:
        reasons.append(f"no {wanted} hypervisor")
    else:
        hypervisor = wanted
    need = demand_of(sandbox)
    if used.vcpus + need.vcpus > node.capacity.vcpus:
        reasons.append("insufficient vcpus")
    if used.memory_mib + need.memory_mib > node.capacity.memory_mib:
        reasons.append("insufficient memory")
    return reasons, hypervisor


def _free_fraction(node: NodeView, used: Demand) -> float:
    """Mean fraction of vCPUs and memory still free on ``node`` with ``used`` placed (0..1)."""
    assert node.capacity is not None
    cpu = 1.0 - used.vcpus / node.capacity.vcpus if node.capacity.vcpus else 0.0
    mem = 1.0 - used.memory_mib / node.capacity.memory_mib if node.capacity.memory_mib else 0.0
    return (cpu + mem) / 2


def decide(
    sandbox: VMSandbox,
    nodes: Iterable[NodeView],
    usage: Mapping[str, Demand],
    *,
    now: datetime,
    alive_window: float,
    strategy: Strategy = Strategy.SPREAD,
) -> Placement | Unschedulable:
    """The best node for ``sandbox`` under ``strategy``, or why there is none."""
    need = demand_of(sandbox)
    best: Placement | None = None
    failures: Counter[str] = Counter()
    total = 0
    for node in sorted(nodes, key=lambda n: n.name):
        total += 1
        used = usage.get(node.name, NOTHING)
        reasons, hypervisor = why_not(node, sandbox, used, now, alive_window)
        if reasons or hypervisor is None:
            failures[", ".join(reasons)] += 1
            continue
        free = _free_fraction(node, used + need)
        score = free if strategy is Strategy.SPREAD else 1.0 - free
        if best is None or score > best.score:
            best = Placement(node=node.name, hypervisor=hypervisor, score=score)
    if best is not None:
        return best
    if total == 0:
        return Unschedulable(message="no nodes with a vmsandbox agent", reasons={})
    groups = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))
    detail = "; ".join(f"{n} node{'s' if n != 1 else ''}: {reason}" for reason, n in groups)
    return Unschedulable(message=f"0/{total} nodes available: {detail}", reasons=dict(failures))


@dataclass(frozen=True)
class Reservation:
    node: str
    demand: Demand


class ReservationLedger:
    """Placements decided by this operator that the watch cache may not show yet, by sandbox uid."""

    def __init__(self) -> None:
        self._by_uid: dict[str, Reservation] = {}

    def reserve(self, uid: str, node: str, demand: Demand) -> None:
        self._by_uid[uid] = Reservation(node, demand)

    def release(self, uid: str) -> None:
        self._by_uid.pop(uid, None)

    def get(self, uid: str) -> Reservation | None:
        return self._by_uid.get(uid)

    def clear(self) -> None:
        self._by_uid.clear()

    def __len__(self) -> int:
        return len(self._by_uid)

    def __contains__(self, uid: object) -> bool:
        return uid in self._by_uid

    def items(self) -> Iterable[tuple[str, Reservation]]:
        return list(self._by_uid.items())


def usage_by_node(
    sandboxes: Iterable[tuple[str, str | None, Demand, bool]], ledger: ReservationLedger
) -> dict[str, Demand]:
    """Resources in use per node; ``sandboxes`` holds (uid, node or None, demand, finished) of each one known.

    A ledger entry stands in for the cache's view of its sandbox, so a placement is counted
    exactly once whether or not the cache has caught up with it.
    """
    usage: dict[str, Demand] = {}
    seen: set[str] = set()
    for uid, node, demand, finished in sandboxes:
        seen.add(uid)
        if finished:
            continue
        reservation = ledger.get(uid)
        where = reservation.node if reservation is not None else node
        if where:
            usage[where] = usage.get(where, NOTHING) + demand
    for uid, reservation in ledger.items():
        if uid not in seen:
            usage[reservation.node] = usage.get(reservation.node, NOTHING) + reservation.demand
    return usage


class UsageIndex:
    """What :func:`usage_by_node` computes over every known sandbox, kept up to date one change at a time.

    A decision then costs the ledger's size (the placements in flight), not the cluster's.
    """

    def __init__(self) -> None:
        self._standing: dict[str, tuple[str | None, Demand, bool]] = {}  # uid -> (node, demand, finished)
        self._usage: dict[str, Demand] = {}

    def _add(self, node: str, demand: Demand, sign: int) -> None:
        _shift(self._usage, node, demand, sign)

    def put(self, uid: str, node: str | None, demand: Demand, finished: bool) -> None:
        self.remove(uid)
        self._standing[uid] = (node, demand, finished)
        if node and not finished:
            self._add(node, demand, +1)

    def remove(self, uid: str) -> None:
        old = self._standing.pop(uid, None)
        if old is not None and old[0] and not old[2]:
            self._add(old[0], old[1], -1)

    def usage(self, ledger: ReservationLedger, *, without: str | None = None) -> dict[str, Demand]:
        """What ``usage_by_node`` gives for every known sandbox and ``ledger``; ``without``: as if
        that sandbox (a uid) were not known (its reservation, if any, still counts)."""
        usage = dict(self._usage)

        def move(node: str | None, demand: Demand, sign: int) -> None:
            if node:
                _shift(usage, node, demand, sign)

        left_out = self._standing.get(without) if without is not None else None
        if left_out is not None and not left_out[2]:
            move(left_out[0], left_out[1], -1)
        for uid, reservation in ledger.items():
            known = self._standing.get(uid) if uid != without else None
            if known is None:
                move(reservation.node, reservation.demand, +1)
            elif not known[2]:
                move(known[0], known[1], -1)
                move(reservation.node, known[1], +1)
        return usage


def _shift(usage: dict[str, Demand], node: str, demand: Demand, sign: int) -> None:
    """Add (``sign`` 1) or take away (-1) ``demand`` on ``node``; a node left with nothing is dropped."""
    total = usage.get(node, NOTHING) + (demand if sign > 0 else NOTHING - demand)
    if total == NOTHING:
        usage.pop(node, None)
    else:
        usage[node] = total
