"""Pools on one node (process backend): the agent keeps its share ready, serves claims warm or cold,
deletes idle members only, and adopts its members after a restart.

The test writes the pool's ``status.nodes`` as the operator would; the end-to-end tests run the
operator itself.
"""

from __future__ import annotations

import time

import pytest

from tests.leaks import processes_mentioning
from tests.node_agent.pools import (
    condition,
    create_pool,
    delete_pool,
    members,
    patch_spec,
    published,
    ready_count,
    share,
    wait_ready,
)
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, pid_alive, unique, wait_for

pytestmark = pytest.mark.kube

TEMPLATE = {"resources": {"vcpus": 1, "memoryMiB": 256}, "hypervisor": "process"}


def _claim(registry: Registry, pool: str, **extra: object) -> dict[str, object]:
    return {
        "image": registry.busybox,
        "command": ["sleep", "600"],
        "hypervisor": "process",
        "resources": {"vcpus": 1, "memoryMiB": 256},
        "pool": pool,
        **extra,
    }


def _pool(cluster: Cluster, agent: AgentProcess, replicas: int = 2) -> str:
    pool = unique("pool")
    create_pool(cluster, pool, TEMPLATE, replicas)
    share(cluster, pool, agent.node, replicas)
    wait_ready(cluster, agent, pool, replicas)
    return pool


def test_two_claims_warm_third_cold_then_refill(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent(VMSANDBOX_AGENT_POOL_SYNC_SECONDS="15")
    pool = _pool(cluster, agent)
    idle = members(agent.runtime_root)
    assert len(idle) == 2 and all(pid_alive(pid) for pid in idle.values())
    # Paused, so that no claim's wake-up replaces a member before the third claim is served.
    paused = f'vmsandbox_agent_pool_paused{{namespace="{cluster.namespace}",pool="{pool}"}}'
    assert f"{paused} 0.0" in agent.get("/metrics").text
    patch_spec(cluster, pool, paused=True)
    wait_for("the agent to hold the pool paused", lambda: f"{paused} 1.0" in agent.get("/metrics").text)
    names = [unique("warm"), unique("warm"), unique("cold")]
    for name in names:
        cluster.create_sandbox(name, _claim(registry, pool), node=agent.node)
    statuses = sorted(
        (cluster.wait_phase(name, "Running", timeout=60) for name in names),
        key=lambda s: condition(s, "WarmStart").get("status") != "True",
    )
    for status in statuses[:2]:
        warm = condition(status, "WarmStart")
        assert (warm["status"], warm["reason"]) == ("True", "ClaimedFromPool"), status
        assert status["vm"]["vmmPID"] in idle.values(), "a warm sandbox runs in a member's VM"
        assert status["bootTimings"]["claim"] > 0 and status["bootTimings"].get("vmBoot", 0) == 0
    assert statuses[0]["vm"]["vmmPID"] != statuses[1]["vm"]["vmmPID"]
    cold = condition(statuses[2], "WarmStart")
    assert (cold["status"], cold["reason"]) == ("False", "PoolEmpty"), statuses[2]
    assert pool in cold["message"] and agent.node in cold["message"]
    assert statuses[2]["vm"]["vmmPID"] not in idle.values()
    assert not members(agent.runtime_root), "a paused pool makes no member"
    patch_spec(cluster, pool, paused=False)
    wait_ready(cluster, agent, pool, 2, timeout=90)  # replaced in the background once resumed
    metrics = agent.get("/metrics").text
    ns = cluster.namespace
    assert f'outcome="warm",pool="{pool}",reason="ClaimedFromPool"}} 2.0' in metrics
    assert f'outcome="cold",pool="{pool}",reason="PoolEmpty"}} 1.0' in metrics
    assert f'vmsandbox_agent_pool_members{{namespace="{ns}",pool="{pool}",state="ready"}} 2.0' in metrics
    assert f'vmsandbox_agent_pool_claimed{{namespace="{ns}",pool="{pool}"}} 2.0' in metrics
    assert "vmsandbox_agent_pool_replenish_seconds_count" in metrics
    for name in names:
        cluster.delete(name)
    for name in names:
        cluster.wait_gone(name)
    for pid in (s["vm"]["vmmPID"] for s in statuses):
        wait_for(f"VMM {pid} to stop", lambda p=pid: not pid_alive(p), timeout=20)  # type: ignore[misc]
    delete_pool(cluster, pool)
    wait_for("members deleted with their pool", lambda: not members(agent.runtime_root), timeout=30)
    wait_for("pool unpublished", lambda: pool not in str(published(cluster, agent.node)), timeout=30)


def test_missing_pool_and_shape_mismatch_start_cold_and_say_why(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    pool = _pool(cluster, agent, replicas=1)
    missing, bigger = unique("nopool"), unique("bigger")
    cluster.create_sandbox(missing, _claim(registry, "no-such-pool"), node=agent.node)
    cluster.create_sandbox(
        bigger, _claim(registry, pool, resources={"vcpus": 1, "memoryMiB": 512}), node=agent.node
    )
    for name, reason, words in (
        (missing, "PoolNotFound", "no-such-pool"),
        (bigger, "PoolShapeMismatch", "512 MiB"),
    ):
        status = cluster.wait_phase(name, "Running", timeout=60)
        warm = condition(status, "WarmStart")
        assert (warm["status"], warm["reason"]) == ("False", reason), status
        assert words in warm["message"]
    assert len(members(agent.runtime_root)) == 1, "a cold start takes no member"
    delete_pool(cluster, pool)
    wait_for("members deleted with their pool", lambda: not members(agent.runtime_root), timeout=30)


def test_scale_down_and_pool_delete_touch_idle_members_only(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent(VMSANDBOX_AGENT_POOL_SYNC_SECONDS="0.5")
    pool = _pool(cluster, agent, replicas=3)
    claimed = unique("kept")
    cluster.create_sandbox(claimed, _claim(registry, pool), node=agent.node)
    status = cluster.wait_phase(claimed, "Running", timeout=60)
    assert condition(status, "WarmStart")["status"] == "True"
    vmm = status["vm"]["vmmPID"]
    wait_ready(cluster, agent, pool, 3, timeout=90)
    share(cluster, pool, agent.node, 1)
    wait_for("scaled down to one idle member", lambda: len(members(agent.runtime_root)) == 1, timeout=30)
    assert pid_alive(vmm) and cluster.status(claimed)["phase"] == "Running"
    delete_pool(cluster, pool)
    wait_for("idle members deleted with their pool", lambda: not members(agent.runtime_root), timeout=30)
    assert pid_alive(vmm), "a claimed sandbox outlives its pool"
    assert cluster.status(claimed)["phase"] == "Running"
    cluster.delete(claimed)
    cluster.wait_gone(claimed)
    wait_for("the claimed VM stopped", lambda: not pid_alive(vmm), timeout=20)


def test_restarted_agent_adopts_its_members(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    pool = _pool(cluster, agent)
    before = members(agent.runtime_root)
    agent.kill()
    assert all(pid_alive(pid) for pid in before.values()), "members outlive the agent"
    agent.start()
    agent.wait_logged("two members adopted", "adopted pool member", 2)
    wait_ready(cluster, agent, pool, 2)
    assert members(agent.runtime_root) == before, "the same members, with the same VMM pids"
    time.sleep(3)  # past the orphan grace period (2 s here): members are no orphans
    assert members(agent.runtime_root) == before
    assert "tore down orphaned" not in agent.logs()
    name = unique("after")
    cluster.create_sandbox(name, _claim(registry, pool), node=agent.node)
    status = cluster.wait_phase(name, "Running", timeout=60)
    assert condition(status, "WarmStart")["status"] == "True"
    assert status["vm"]["vmmPID"] in before.values()
    cluster.delete(name)
    cluster.wait_gone(name)
    delete_pool(cluster, pool)
    wait_for("members deleted with their pool", lambda: not members(agent.runtime_root), timeout=30)


SNAPSHOT_TEMPLATE = {"resources": {"vcpus": 1, "memoryMiB": 256}, "hypervisor": "cloud-hypervisor"}


def test_snapshot_pool_restores_a_copy_per_claim_and_holds_no_vm(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent(VMSANDBOX_AGENT_POOL_SYNC_SECONDS="0.5")
    pool = unique("snap")
    create_pool(cluster, pool, SNAPSHOT_TEMPLATE, 2, mode="snapshot")
    share(cluster, pool, agent.node, 2)
    wait_for(
        "the pool's snapshot", lambda: ready_count(cluster, agent.node, cluster.namespace, pool) == 2, 90
    )
    snaps = sorted((agent.runtime_root / "snapshots").iterdir())
    assert len(snaps) == 1 and (snaps[0] / "snapshot.json").is_file()
    assert not members(agent.runtime_root), "a snapshot pool keeps no VM running"
    assert processes_mentioning(str(snaps[0])) == [], "nothing runs for an idle snapshot pool"
    agent.kill()
    agent.start()  # a restarted agent keeps the node's snapshot
    wait_for("snapshot adopted", lambda: "adopted pool snapshot" in agent.logs(), timeout=30)
    assert sorted((agent.runtime_root / "snapshots").iterdir()) == snaps
    spec = _claim(registry, pool, hypervisor="cloud-hypervisor")
    names = [unique("restored") for _ in range(3)]
    for name in names:
        cluster.create_sandbox(name, spec, node=agent.node)
    statuses = [cluster.wait_phase(name, "Running", timeout=90) for name in names]
    for status in statuses:
        warm = condition(status, "WarmStart")
        assert (warm["status"], warm["reason"]) == ("True", "ClaimedFromPool"), status
        assert "snapshot" in warm["message"] and status["bootTimings"]["restore"] > 0
    assert len({s["vm"]["vmmPID"] for s in statuses}) == 3, "each claim restores its own copy"
    for name in names:
        cluster.delete(name)
    for name in names:
        cluster.wait_gone(name, timeout=60)
    delete_pool(cluster, pool)
    snapshots = agent.runtime_root / "snapshots"
    wait_for("the snapshot deleted with its pool", lambda: not snapshots.exists(), timeout=30)


def test_pool_changes_and_claims_are_acted_on_at_once_not_at_the_next_pass(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    """With a minute between passes, only the pool watch and the claim's wake-up can make
    these deadlines: a new pool is filled, a claimed member replaced, a deleted pool emptied."""
    agent = make_agent(VMSANDBOX_AGENT_POOL_SYNC_SECONDS="60")
    time.sleep(2)  # the keeper's first pass (at start) is over: the pool below is new to it
    started = time.monotonic()
    pool = _pool(cluster, agent, replicas=1)
    assert time.monotonic() - started < 40
    before = set(members(agent.runtime_root))
    name = unique("warm")
    cluster.create_sandbox(name, _claim(registry, pool), node=agent.node)
    status = cluster.wait_phase(name, "Running", timeout=60)
    assert condition(status, "WarmStart")["reason"] == "ClaimedFromPool", status
    wait_for(
        "a new member to replace the claimed one",
        lambda: set(members(agent.runtime_root, ready_only=True)) - before,
        timeout=40,
    )
    delete_pool(cluster, pool)
    wait_for("members deleted with their pool", lambda: not members(agent.runtime_root), timeout=40)
    cluster.delete(name)
    cluster.wait_gone(name)
