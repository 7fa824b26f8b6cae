"""Filtering, scoring, unschedulable messages and the reservation ledger, without a cluster."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from tests.operator.factories import sandbox, view
from vmsandbox.operator.config import Strategy
from vmsandbox.operator.scheduling import (
    Demand,
    Placement,
    ReservationLedger,
    Unschedulable,
    UsageIndex,
    decide,
    demand_of,
    usage_by_node,
)


def place(sb, nodes, usage=None, strategy=Strategy.SPREAD):  # type: ignore[no-untyped-def]
    return decide(sb, nodes, usage or {}, now=datetime.now(UTC), alive_window=40.0, strategy=strategy)


def test_dead_agent_and_missing_capacity_are_filtered() -> None:
    nodes = [view("stale", lease_age=41.0), view("never", lease_age=None), view("notready", ready=False)]
    result = place(sandbox(), nodes)
    assert isinstance(result, Unschedulable)
    assert result.message == "0/3 nodes available: 3 nodes: agent not ready"
    assert isinstance(place(sandbox(), [*nodes, view("fresh", lease_age=39.0)]), Placement)


def test_node_selector_must_match_every_label() -> None:
    nodes = [view("a", labels={"disk": "ssd", "zone": "x"}), view("b", labels={"disk": "ssd"})]
    result = place(sandbox(nodeSelector={"disk": "ssd", "zone": "x"}), nodes)
    assert isinstance(result, Placement) and result.node == "a"
    nowhere = place(sandbox(nodeSelector={"zone": "y"}), nodes)
    assert isinstance(nowhere, Unschedulable)
    assert "2 nodes: node selector mismatch" in nowhere.message


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute"])
def test_hard_taints_need_a_toleration(effect: str) -> None:
    nodes = [view("gpu", taints=[{"key": "gpu", "value": "true", "effect": effect}])]
    result = place(sandbox(), nodes)
    assert (
        isinstance(result, Unschedulable) and result.message == "0/1 nodes available: 1 node: taint gpu=true"
    )
    tolerated = sandbox(tolerations=[{"key": "gpu", "operator": "Equal", "value": "true", "effect": effect}])
    assert isinstance(place(tolerated, nodes), Placement)
    exists = sandbox(tolerations=[{"key": "gpu", "operator": "Exists"}])
    assert isinstance(place(exists, nodes), Placement)
    wrong_value = sandbox(tolerations=[{"key": "gpu", "operator": "Equal", "value": "false"}])
    assert isinstance(place(wrong_value, nodes), Unschedulable)


def test_prefer_no_schedule_does_not_filter() -> None:
    nodes = [view("soft", taints=[{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}])]
    assert isinstance(place(sandbox(), nodes), Placement)


def test_hypervisor_must_be_published_and_default_is_the_nodes() -> None:
    nodes = [
        view("ch", hypervisors=("cloud-hypervisor",), default="cloud-hypervisor"),
        view("qemu", hypervisors=("qemu",), default="qemu"),
    ]
    result = place(sandbox(hypervisor="qemu"), nodes)
    assert isinstance(result, Placement) and (result.node, result.hypervisor) == ("qemu", "qemu")
    none = place(sandbox(hypervisor="process"), nodes)
    assert isinstance(none, Unschedulable)
    assert none.message == "0/2 nodes available: 2 nodes: no process hypervisor"
    default = place(sandbox(), [nodes[1]])
    assert isinstance(default, Placement) and default.hypervisor == "qemu"


def test_capacity_counts_what_is_already_placed() -> None:
    nodes = [view("small", vcpus=2, memory=1024)]
    assert isinstance(place(sandbox(vcpus=2, memory=1024), nodes), Placement)
    full = place(sandbox(vcpus=1, memory=256), nodes, {"small": Demand(2, 512)})
    assert isinstance(full, Unschedulable) and full.message.endswith("1 node: insufficient vcpus")
    both = place(sandbox(vcpus=1, memory=1024), nodes, {"small": Demand(2, 512)})
    assert isinstance(both, Unschedulable)
    assert both.message.endswith("1 node: insufficient vcpus, insufficient memory")


def test_message_groups_nodes_per_reason_most_common_first() -> None:
    nodes = [
        *(view(f"m{i}", memory=256) for i in range(3)),
        *(view(f"g{i}", taints=[{"key": "gpu", "value": "true", "effect": "NoSchedule"}]) for i in range(2)),
    ]
    result = place(sandbox(memory=512), nodes)
    assert isinstance(result, Unschedulable)
    assert result.message == "0/5 nodes available: 3 nodes: insufficient memory; 2 nodes: taint gpu=true"
    assert result.reasons == {"insufficient memory": 3, "taint gpu=true": 2}


def test_no_nodes_at_all() -> None:
    result = place(sandbox(), [])
    assert isinstance(result, Unschedulable) and "no nodes" in result.message


def test_spread_prefers_least_allocated_binpack_most() -> None:
    nodes = [view("a"), view("b")]
    usage = {"a": Demand(4, 4096)}
    spread = place(sandbox(), nodes, usage, Strategy.SPREAD)
    binpack = place(sandbox(), nodes, usage, Strategy.BINPACK)
    assert isinstance(spread, Placement) and spread.node == "b"
    assert isinstance(binpack, Placement) and binpack.node == "a"


def test_ledger_keeps_a_burst_from_overcommitting() -> None:
    """100 sandboxes decided back to back while the cache shows none of them placed."""
    nodes = [view(f"n{i}", vcpus=4, memory=4096) for i in range(5)]  # room for 20 x (1 vCPU, 1 GiB)
    ledger = ReservationLedger()
    burst = [sandbox(f"sb{i}", vcpus=1, memory=1024) for i in range(100)]
    cache_view = [(sb.metadata.uid or "", None, demand_of(sb), False) for sb in burst]  # nothing visible yet
    placed: dict[str, int] = {}
    for sb in burst:
        result = place(sb, nodes, usage_by_node(cache_view, ledger))
        if isinstance(result, Placement):
            ledger.reserve(sb.metadata.uid or "", result.node, demand_of(sb))
            placed[result.node] = placed.get(result.node, 0) + 1
    assert sum(placed.values()) == 20
    assert placed == {f"n{i}": 4 for i in range(5)}  # spread evenly, none over capacity


def test_usage_counts_each_sandbox_once_and_skips_finished() -> None:
    ledger = ReservationLedger()
    ledger.reserve("u1", "a", Demand(1, 100))  # cache not caught up: counted from the ledger
    ledger.reserve("u2", "b", Demand(2, 200))  # cache shows it on b too: counted once
    ledger.reserve("u9", "c", Demand(4, 400))  # not in the cache at all yet
    usage = usage_by_node(
        [
            ("u1", None, Demand(1, 100), False),
            ("u2", "b", Demand(2, 200), False),
            ("u3", "a", Demand(1, 50), True),  # finished: frees its capacity
            ("u4", "a", Demand(1, 50), False),
        ],
        ledger,
    )
    assert usage == {"a": Demand(2, 150), "b": Demand(2, 200), "c": Demand(4, 400)}


def test_usage_index_agrees_with_a_full_pass_through_every_change() -> None:
    """The index a decision reads is usage_by_node over every known sandbox, after any sequence of
    placements, finishes, moves, removals and reservations, with or without one sandbox left out."""
    rng = random.Random(17)
    index = UsageIndex()
    known: dict[str, tuple[str | None, Demand, bool]] = {}
    ledger = ReservationLedger()
    nodes = [None, "a", "b", "c"]
    for _ in range(2000):
        uid = f"u{rng.randrange(30)}"
        roll = rng.random()
        if roll < 0.5:
            entry = (rng.choice(nodes), Demand(rng.randint(1, 4), rng.choice((128, 512))), rng.random() < 0.2)
            known[uid] = entry
            index.put(uid, *entry)
        elif roll < 0.65:
            known.pop(uid, None)
            index.remove(uid)
        elif roll < 0.85:
            ledger.reserve(uid, rng.choice(["a", "b", "c"]), Demand(rng.randint(1, 4), 256))
        else:
            ledger.release(uid)
        rows = [(u, node, demand, done) for u, (node, demand, done) in known.items()]
        assert index.usage(ledger) == usage_by_node(rows, ledger)
        others = [row for row in rows if row[0] != uid]
        assert index.usage(ledger, without=uid) == usage_by_node(others, ledger)
