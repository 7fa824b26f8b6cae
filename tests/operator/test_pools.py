"""The pool arithmetic without an API server: shares, members' capacity, status sums, warm nodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.operator.factories import sandbox, view
from vmsandbox.api.network import NetworkMode
from vmsandbox.api.pool import PoolReport, VMSandboxPool, parse_pool
from vmsandbox.api.status import ConditionStatus, ConditionType
from vmsandbox.operator.claims import Start, place
from vmsandbox.operator.config import Strategy
from vmsandbox.operator.pools import (
    claims_in_flight,
    plan,
    pool_status,
    ready_by_node,
    shares,
    warm_nodes,
)
from vmsandbox.operator.scheduling import Demand, Placement

NOW = datetime.now(UTC)
KW: dict[str, Any] = {"now": NOW, "alive_window": 10.0}


def pool(name: str = "p", *, created: int = 0, **spec: Any) -> VMSandboxPool:
    return parse_pool(
        {
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": f"uid-{name}",
                "generation": 1,
                "creationTimestamp": (NOW + timedelta(seconds=created)).isoformat(),
            },
            "spec": spec,
        }
    )


def small(**spec: Any) -> dict[str, Any]:
    return {"template": {"resources": {"vcpus": 1, "memoryMiB": 256}}, **spec}


def test_four_members_spread_evenly_over_two_nodes() -> None:
    nodes = [view("a"), view("b")]
    assert shares(pool(**small(replicas=4)), nodes, {}, **KW) == {"a": 2, "b": 2}
    assert shares(pool(**small(replicas=3)), nodes, {}, **KW) == {"a": 2, "b": 1}
    assert shares(pool(**small(replicas=0)), nodes, {}, **KW) == {}


def test_node_selector_taints_hypervisor_and_dead_agents_are_respected() -> None:
    nodes = [
        view("a", labels={"zone": "x"}),
        view("b", labels={"zone": "y"}),
        view("c", labels={"zone": "x"}, taints=[{"key": "gpu", "effect": "NoSchedule"}]),
        view("d", labels={"zone": "x"}, lease_age=None),
        view("e", labels={"zone": "x"}, hypervisors=("qemu",), default="qemu"),
    ]
    p = pool(
        **small(
            replicas=4, template={"resources": {"vcpus": 1, "memoryMiB": 256}, "nodeSelector": {"zone": "x"}}
        )
    )
    assert shares(p, nodes, {}, **KW) == {"a": 2, "e": 2}
    tolerant = {"nodeSelector": {"zone": "x"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}
    p = pool(
        replicas=3, template={"resources": {"vcpus": 1, "memoryMiB": 256}, "hypervisor": "qemu", **tolerant}
    )
    assert shares(p, nodes, {}, **KW) == {"e": 3}


def test_booted_members_need_room_snapshot_ones_do_not() -> None:
    nodes = [view("a", vcpus=2, memory=1024), view("b", vcpus=8, memory=8192)]
    used = {"b": Demand(8, 8192)}  # b is full of sandboxes
    assert shares(pool(**small(replicas=4, mode="booted")), nodes, used, **KW) == {"a": 2}
    assert shares(pool(**small(replicas=4, mode="snapshot")), nodes, used, **KW) == {"a": 2, "b": 2}
    huge = {"template": {"resources": {"vcpus": 4, "memoryMiB": 2048}}}
    assert shares(pool(replicas=2, mode="snapshot", **huge), nodes, {}, **KW) == {"b": 2}, (
        "a snapshot member must still fit the node once restored"
    )


def test_plan_counts_booted_members_once_and_older_pools_first() -> None:
    nodes = [view("a", vcpus=2, memory=8192)]
    first = pool("first", created=0, **small(replicas=2))
    second = pool("second", created=5, **small(replicas=2))
    snap = pool("snap", created=1, **small(replicas=2, mode="snapshot"))
    result = plan([second, snap, first], nodes, {}, **KW)
    assert result.shares == {"default/first": {"a": 2}, "default/snap": {"a": 2}, "default/second": {}}
    assert result.members == {"a": Demand(2, 512)}, "snapshot members hold no capacity"


def test_status_sums_reports_of_this_pool_only() -> None:
    p = pool(**small(replicas=4))
    reports = {
        "a": {"default/p": PoolReport(uid="uid-p", ready=2)},
        "b": {"default/p": PoolReport(uid="uid-p", ready=1), "default/q": PoolReport(uid="uid-q", ready=5)},
        "c": {"default/p": PoolReport(uid="uid-of-a-deleted-namesake", ready=3)},
    }
    ready = ready_by_node(p, reports)
    assert ready == {"a": 2, "b": 1}
    status = pool_status(p, {"a": 2, "b": 2}, ready)
    assert (status.replicas, status.ready_replicas, status.selector) == (4, 3, "vmsandbox.io/pool=p")
    assert status.observed_generation == 1
    assert [(n.name, n.desired, n.ready) for n in status.nodes or []] == [("a", 2, 2), ("b", 2, 1)]
    cond = status.conditions[0] if status.conditions else None
    assert cond is not None and (cond.status, cond.reason) == (ConditionStatus.FALSE, "MembersStarting")
    full = pool_status(p, {"a": 2, "b": 2}, {"a": 2, "b": 2})
    assert full.conditions and (full.conditions[0].status, full.conditions[0].reason) == (
        "True",
        "MembersReady",
    )
    short = pool_status(p, {"a": 2}, {"a": 2})
    assert short.conditions and short.conditions[0].reason == "InsufficientCapacity"
    assert "2 of 4 members fit" in str(short.conditions[0].message)


def test_a_paused_pool_missing_members_says_paused_and_a_full_one_is_ready() -> None:
    p = pool(**small(replicas=2, paused=True))
    short = pool_status(p, {"a": 2}, {"a": 1})
    cond = short.conditions[0] if short.conditions else None
    assert cond is not None and (cond.status, cond.reason) == (ConditionStatus.FALSE, "Paused")
    assert "1 of 2 members ready" in str(cond.message) and "spec.paused" in str(cond.message)
    full = pool_status(p, {"a": 2}, {"a": 2})
    assert full.conditions and (full.conditions[0].status, full.conditions[0].reason) == (
        "True",
        "MembersReady",
    )


def _claim(name: str, node: str | None, *, pool_name: str = "p", warm: bool | None = None) -> Any:
    sb = sandbox(name, pool=pool_name)
    if warm is not None:
        status = ConditionStatus.TRUE if warm else ConditionStatus.FALSE
        sb.status.set_condition(ConditionType.WARM_START, status, "x")
    return sb, node


def test_claims_in_flight_until_the_agent_says_warm_or_cold() -> None:
    placed = [
        _claim("c1", "a"),
        _claim("c2", "a", warm=True),
        _claim("c3", "b", warm=False),
        _claim("c4", None),
        _claim("c5", "a", pool_name="other"),
        (sandbox("plain"), "a"),
    ]
    assert claims_in_flight(placed, "default/p") == {"a": 1}
    assert warm_nodes({"a": 1, "b": 2}, {"a": 1}) == {"b": 2}


def _place(sb: Any, pools: dict[str, VMSandboxPool], reports: Any, placed: Any = (), **kw: Any) -> Any:
    nodes = kw.pop("nodes", [view("a"), view("b")])
    usage = kw.pop("usage", {})
    current = plan(pools.values(), nodes, usage, **KW)
    return place(
        sb,
        nodes,
        usage,
        current.members,
        pools,
        reports,
        placed,
        strategy=Strategy.SPREAD,
        default_mode=NetworkMode.RESTRICTED,
        **KW,
    )


def test_a_claim_goes_to_the_node_with_a_ready_member() -> None:
    p = pool(**small(replicas=2))
    claim = sandbox("c", pool="p", vcpus=1, memory=256)
    for node in ("a", "b"):
        result = _place(claim, {p.ref: p}, {node: {p.ref: PoolReport(uid="uid-p", ready=1)}})
        assert result.start is Start.WARM
        assert isinstance(result.decision, Placement) and result.decision.node == node


def test_a_member_already_spoken_for_sends_the_next_claim_cold() -> None:
    p = pool(**small(replicas=2))
    reports = {"a": {p.ref: PoolReport(uid="uid-p", ready=1)}}
    other = sandbox("first", pool="p", vcpus=1, memory=256)
    result = _place(sandbox("c", pool="p", vcpus=1, memory=256), {p.ref: p}, reports, [(other, "a")])
    assert result.start is Start.COLD and "no ready member" in str(result.why_cold)
    assert isinstance(result.decision, Placement)


def test_missing_pool_or_other_shape_still_schedules() -> None:
    p = pool(**small(replicas=2))
    reports = {"a": {p.ref: PoolReport(uid="uid-p", ready=2)}}
    missing = _place(sandbox("m", pool="nope", vcpus=1, memory=256), {p.ref: p}, reports)
    assert missing.start is Start.COLD and "not found" in str(missing.why_cold)
    assert isinstance(missing.decision, Placement)
    bigger = _place(sandbox("b", pool="p", vcpus=2, memory=256), {p.ref: p}, reports)
    assert bigger.start is Start.COLD and "spec.resources" in str(bigger.why_cold)
    assert isinstance(bigger.decision, Placement)
    other_net = _place(
        sandbox("n", pool="p", vcpus=1, memory=256, network={"mode": "open"}), {p.ref: p}, reports
    )
    assert other_net.start is Start.COLD and "network mode open" in str(other_net.why_cold)


def test_booted_members_count_against_capacity_and_a_claim_takes_one_members_place() -> None:
    nodes = [view("a", vcpus=2, memory=512)]
    p = pool(**small(replicas=2))
    reports = {"a": {p.ref: PoolReport(uid="uid-p", ready=2)}}
    cold = _place(sandbox("plain", vcpus=1, memory=256), {p.ref: p}, reports, nodes=nodes)
    assert not isinstance(cold.decision, Placement), "two booted members fill the node"
    assert "insufficient" in cold.decision.message
    warm = _place(sandbox("c", pool="p", vcpus=1, memory=256), {p.ref: p}, reports, nodes=nodes)
    assert warm.start is Start.WARM and isinstance(warm.decision, Placement)
    snap = pool(**small(replicas=2, mode="snapshot"))
    free = _place(sandbox("plain", vcpus=1, memory=256), {snap.ref: snap}, {}, nodes=nodes)
    assert isinstance(free.decision, Placement), "a snapshot pool holds no capacity"
