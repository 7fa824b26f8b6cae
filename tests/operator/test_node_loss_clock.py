"""Node loss judged on the operator's own clock, and the brake on mass eviction."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.operator.factories import lease_obj, micro, node_obj, sandbox_obj
from tests.operator.harness import (
    FakeAgents,
    create_sandbox,
    events_for,
    get_sandbox,
    leading_operator,
    operator_config,
    phase,
    purge,
    wait_for,
)
from tests.operator.test_operator_kube import running_once_scheduled
from vmsandbox.api import VMSandbox
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.operator import lifecycle as lc
from vmsandbox.operator.cache import ClusterCache
from vmsandbox.operator.config import OperatorConfig

CONFIG = OperatorConfig(agent_alive_seconds=40, node_lost_grace_seconds=60)


def _lease(node: str, renewed: datetime, rv: int) -> dict[str, Any]:
    lease = lease_obj(node)
    lease["spec"]["renewTime"] = micro(renewed)
    lease["metadata"]["resourceVersion"] = str(rv)
    return lease


@pytest.mark.parametrize("skew", [-600.0, 600.0])
def test_a_skewed_agent_clock_never_makes_a_node_look_lost(skew: float) -> None:
    cache = ClusterCache(CONFIG)
    cache.upsert_node(node_obj("n1"))
    agent_now = datetime.now(UTC) + timedelta(seconds=skew)
    cache.upsert_lease(_lease("n1", agent_now, 1))
    age = cache.lease_age("n1", datetime.now(UTC))
    assert age is not None and abs(age) < 5, "the agent's renewTime is never compared with our clock"
    assert cache.node_views()["n1"].agent_alive(datetime.now(UTC), CONFIG.agent_alive_seconds)


def test_silence_is_time_since_the_lease_last_changed_as_this_operator_saw_it() -> None:
    cache = ClusterCache(CONFIG)
    cache.upsert_node(node_obj("n1"))
    t0 = datetime.now(UTC)
    cache.upsert_lease(_lease("n1", t0, 1))
    seen = cache.renewed("n1")
    assert seen is not None
    later = seen + timedelta(seconds=90)
    assert cache.lease_age("n1", later) == pytest.approx(90, abs=0.01)
    cache.upsert_lease(_lease("n1", t0, 2))  # a write that did not renew (e.g. a label): no change
    assert cache.renewed("n1") == seen
    cache.upsert_lease(_lease("n1", t0 + timedelta(seconds=10), 3))
    renewed = cache.renewed("n1")
    assert renewed is not None and renewed > seen
    cache.restart_lease_clocks()  # a new term: silence counts from now
    restarted = cache.renewed("n1")
    assert restarted is not None and restarted >= renewed


def test_unreachable_nodes_counts_only_nodes_heard_from_within_the_window() -> None:
    cache = ClusterCache(CONFIG)
    for i, name in enumerate(["a", "b", "c", "d", "old"]):
        cache.upsert_node(node_obj(name))
        cache.upsert_lease(_lease(name, datetime.now(UTC), i + 1))
    now = datetime.now(UTC)
    for name, silent in {"a": 70, "b": 45, "c": 5, "d": 1, "old": 500}.items():
        cache.lease_seen[name] = (cache.lease_seen[name][0], now - timedelta(seconds=silent))
    unreachable, considered = cache.unreachable_nodes(now, 40, 120)
    assert unreachable == {"a", "b"} and considered == {"a", "b", "c", "d"}


def _running_on_node(**spec: Any) -> VMSandbox:
    obj = sandbox_obj("s", **spec)
    obj["metadata"]["labels"] = {"vmsandbox.io/node": "n1"}
    obj["status"] = {"phase": "Running", "nodeName": "n1"}
    return VMSandbox.model_validate(obj)


def test_the_brake_keeps_a_silent_node_unknown_instead_of_lost() -> None:
    sandbox = _running_on_node(restartPolicy="Always")
    free = lc.next_step(sandbox, silence=61, finished_for=None, config=CONFIG)
    assert free.action is lc.Action.MARK_NODE_LOST
    braked = lc.next_step(sandbox, silence=61, finished_for=None, config=CONFIG, evictions_paused="why")
    assert braked.action is lc.Action.MARK_UNKNOWN and braked.message.endswith("why")
    sandbox.status.phase = sandbox.status.phase.UNKNOWN
    again = lc.next_step(sandbox, silence=600, finished_for=None, config=CONFIG, evictions_paused="why")
    assert again.action is lc.Action.NONE and again.recheck is not None


# ---- against the real API server ------------------------------------------------------------


def _metric(port: int, name: str) -> float:
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not exposed")


@pytest.mark.kube
def test_agents_with_clocks_ten_minutes_off_are_never_lost(kube: LocalCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    agents = FakeAgents(kube, ns, period=1.0)
    try:
        agents.skew = {"ahead": 600.0, "behind": -600.0}
        agents.add("ahead")
        agents.add("behind")
        with leading_operator(operator_config(ns), kube.kubeconfig_path) as op:
            for i in range(4):
                create_sandbox(kube, ns, sandbox_obj(f"k{i}", restartPolicy="Always"))
            running_once_scheduled(kube, ns, [f"k{i}" for i in range(4)])
            time.sleep(2 * op.config.node_lost_grace_seconds + 1)
            for i in range(4):
                obj = get_sandbox(kube, ns, f"k{i}")
                assert obj is not None and phase(obj) == "Running", obj
                assert {e["reason"] for e in events_for(kube, ns, f"k{i}")}.isdisjoint(
                    {"NodeUnreachable", "NodeLost"}
                )
    finally:
        agents.close()
        purge(kube, ns)


@pytest.mark.kube
def test_three_of_four_nodes_lost_at_once_evicts_nothing(kube: LocalCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    agents = FakeAgents(kube, ns, period=1.0)
    names = ["m0", "m1", "m2", "m3"]
    try:
        for name in names:
            agents.add(name, vcpus=4, memory=4096)
        config = operator_config(ns)
        with leading_operator(config, kube.kubeconfig_path):
            for i in range(8):
                create_sandbox(kube, ns, sandbox_obj(f"e{i}", restartPolicy="Always"))
            running_once_scheduled(kube, ns, [f"e{i}" for i in range(8)])
            for name in names[:3]:
                agents.kill(name)
            wait_for(
                "brake metric", lambda: _metric(config.metrics_port, "vmsandbox_operator_evictions_paused")
            )
            time.sleep(config.node_lost_grace_seconds)  # well past the grace
            reasons: set[str] = set()
            for i in range(8):
                obj = get_sandbox(kube, ns, f"e{i}")
                assert obj is not None
                assert obj["status"].get("reason") != "NodeLost", obj["status"]
                assert obj["status"].get("restartCount", 0) == 0, "nothing was rescheduled"
                reasons |= {e["reason"] for e in events_for(kube, ns, f"e{i}")}
            assert "EvictionsPaused" in reasons
            assert "NodeLost" not in reasons and "Rescheduled" not in reasons
            assert _metric(config.metrics_port, "vmsandbox_operator_unreachable_nodes") == 3
            # The nodes come back: the brake is released and nothing was lost meanwhile.
            for name in names[:3]:
                agents.revive(name)
            wait_for(
                "brake released",
                lambda: _metric(config.metrics_port, "vmsandbox_operator_evictions_paused") == 0,
                timeout=15,
            )

            # Recovered: none left Unknown (fake agents set no conditions, so a recovered
            # sandbox reads as Scheduled), none Failed, none moved.
            def phases() -> set[str | None]:
                return {phase(get_sandbox(kube, ns, f"e{i}")) for i in range(8)}

            wait_for("recovered", lambda: phases() <= {"Running", "Scheduled"}, timeout=15)
            for i in range(8):
                obj = get_sandbox(kube, ns, f"e{i}")
                assert obj is not None and obj["status"].get("restartCount", 0) == 0
    finally:
        agents.close()
        purge(kube, ns)
