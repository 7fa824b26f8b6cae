"""Where a sandbox goes when pools exist: a claim to a node with a member ready for it, else as usual.

Booted members hold their VM's memory, so they count against every node's capacity. A claim
placed on a node with a ready booted member takes that member's place, so that node is
credited one member when the claim is weighed there. A missing pool, a shape the pool's
template does not have or a pool with nothing ready never blocks a sandbox: it is placed cold
and its node's agent says why in the WarmStart condition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from vmsandbox.api import VMSandbox
from vmsandbox.api.network import NetworkMode
from vmsandbox.api.pool import VMSandboxPool, shape_mismatch
from vmsandbox.operator.config import Strategy
from vmsandbox.operator.nodes import NodeView
from vmsandbox.operator.pools import (
    Reports,
    claim_credit,
    claims_in_flight,
    pool_ref,
    ready_by_node,
    warm_nodes,
)
from vmsandbox.operator.scheduling import NOTHING, Demand, Placement, Unschedulable, decide


class Start(StrEnum):
    """How the operator expects a sandbox to start (the agent decides, and says so in WarmStart)."""

    NO_POOL = "none"
    WARM = "warm"
    COLD = "cold"


@dataclass(frozen=True)
class ClaimDecision:
    decision: Placement | Unschedulable
    start: Start
    why_cold: str | None = None

    @property
    def note(self) -> str:
        """What the placement Event adds for a claim: why this node, or why a cold start."""
        if self.start is Start.WARM:
            return "; a pool member is ready there"
        if self.start is Start.COLD:
            return f"; no pool member for it ({self.why_cold}), it starts cold"
        return ""


def with_members(usage: Mapping[str, Demand], members: Mapping[str, Demand]) -> dict[str, Demand]:
    """Sandboxes' usage plus the capacity booted pool members hold, per node."""
    out = dict(usage)
    for node, held in members.items():
        out[node] = out.get(node, NOTHING) + held
    return out


def _mismatch(
    sandbox: VMSandbox, pool: VMSandboxPool, node: NodeView, default_mode: NetworkMode
) -> str | None:
    default = node.capacity.default_hypervisor if node.capacity is not None else None
    return shape_mismatch(
        sandbox.spec, pool.spec.template, node_hypervisor=default, default_mode=default_mode
    )


def place(
    sandbox: VMSandbox,
    nodes: Iterable[NodeView],
    usage: Mapping[str, Demand],
    members: Mapping[str, Demand],
    pools: Mapping[str, VMSandboxPool],
    reports: Reports,
    placed: Iterable[tuple[VMSandbox, str | None]],
    *,
    now: datetime,
    alive_window: float,
    strategy: Strategy,
    default_mode: NetworkMode,
) -> ClaimDecision:
    """The node for ``sandbox``; a claim prefers nodes with a ready member not yet spoken for.

    ``members``: the capacity booted pool members hold per node (:attr:`Plan.members`).
    """
    views = list(nodes)
    total = with_members(usage, members)
    ref = pool_ref(sandbox)

    def cold(start: Start, why: str | None = None) -> ClaimDecision:
        decision = decide(sandbox, views, total, now=now, alive_window=alive_window, strategy=strategy)
        return ClaimDecision(decision, start, why)

    if ref is None:
        return cold(Start.NO_POOL)
    pool = pools.get(ref)
    if pool is None:
        return cold(Start.COLD, f"pool {sandbox.spec.pool} not found")
    warm = warm_nodes(ready_by_node(pool, reports), claims_in_flight(placed, ref))
    candidates = [v for v in views if v.name in warm and _mismatch(sandbox, pool, v, default_mode) is None]
    if not candidates:
        mismatches = [w for v in views if v.name in warm and (w := _mismatch(sandbox, pool, v, default_mode))]
        empty = f"pool {sandbox.spec.pool} has no ready member"
        return cold(Start.COLD, mismatches[0] if mismatches else empty)
    credited = dict(total)
    for view in candidates:
        less = claim_credit(pool, members, view.name).get(view.name, NOTHING)
        credited[view.name] = usage.get(view.name, NOTHING) + less
    decision = decide(sandbox, candidates, credited, now=now, alive_window=alive_window, strategy=strategy)
    if isinstance(decision, Placement):
        return ClaimDecision(decision, Start.WARM)
    return cold(Start.COLD, "no node with a ready member has room for the sandbox")
