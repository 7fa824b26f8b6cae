"""Pools end to end: the operator spreads a pool and places claims, the agent keeps members ready,
serves claims warm or cold, refills, scales down, and leaves claimed sandboxes running when the
pool goes. The main scenario runs on the process backend and on QEMU (TCG here)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.processes import OperatorProcess, running_operator
from tests.e2e.test_end_to_end import SETTINGS
from tests.node_agent.pools import condition, create_pool, delete_pool, members, patch_spec
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, pid_alive, unique, wait_for
from tests.qemu.conftest import IMAGE_FILES, REQUIRE_VM
from tests.qemu.pool_agent import qemu_pool_agent_env
from vmsandbox.api.constants import GROUP, POOL_PLURAL, VERSION
from vmsandbox.devcluster.cluster import LocalCluster

pytestmark = pytest.mark.kube

RESOURCES = {"vcpus": 1, "memoryMiB": 256}


@pytest.fixture
def operator(kube: LocalCluster, kube_namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    settings = {**SETTINGS, "allowed_hypervisors": "process,qemu"}
    with running_operator(kube, kube_namespace, tmp_path, **settings) as op:
        yield op


def _pool_status(cluster: Cluster, name: str) -> dict[str, Any]:
    custom = cluster.custom
    obj: Any = custom.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace, POOL_PLURAL, name)
    return dict(obj.get("status") or {})


def _wait_pool_ready(cluster: Cluster, name: str, count: int, timeout: float) -> None:
    wait_for(
        f"pool {name} readyReplicas {count}",
        lambda: _pool_status(cluster, name).get("readyReplicas") == count,
        timeout=timeout,
    )


def _agent(make_agent: MakeAgent, hypervisor: str) -> AgentProcess:
    if hypervisor == "process":
        return make_agent(VMSANDBOX_AGENT_POOL_SYNC_SECONDS="15")
    image = Path(os.environ.get("VMSANDBOX_GUEST_IMAGE_DIR", ""))
    if not all((image / name).is_file() for name in IMAGE_FILES):
        if REQUIRE_VM:
            pytest.fail("VMSANDBOX_REQUIRE_VM=1 but VMSANDBOX_GUEST_IMAGE_DIR holds no guest image")
        pytest.skip("VMSANDBOX_GUEST_IMAGE_DIR holds no guest image")
    return make_agent(**qemu_pool_agent_env(image, 15))


@pytest.fixture
def pools_deleted(make_agent: MakeAgent, cluster: Cluster) -> Iterator[None]:
    """After the test, before its agents are checked for leaks: delete every pool it left."""
    yield
    for item in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, cluster.namespace, POOL_PLURAL)[
        "items"
    ]:
        delete_pool(cluster, item["metadata"]["name"])


@pytest.mark.parametrize("hypervisor", ["process", pytest.param("qemu", marks=pytest.mark.vm)])
def test_pool_of_two_serves_two_warm_then_cold_and_refills(
    operator: OperatorProcess,
    make_agent: MakeAgent,
    pools_deleted: None,
    cluster: Cluster,
    registry: Registry,
    hypervisor: str,
) -> None:
    slow = hypervisor == "qemu"
    agent = _agent(make_agent, hypervisor)
    pool = unique("pool")
    create_pool(cluster, pool, {"resources": RESOURCES, "hypervisor": hypervisor}, 2)
    _wait_pool_ready(cluster, pool, 2, timeout=300 if slow else 60)
    status = _pool_status(cluster, pool)
    assert status["nodes"] == [{"name": agent.node, "desired": 2, "ready": 2}]
    idle = members(agent.runtime_root)
    assert len(idle) == 2
    # Paused, so that no claim's wake-up replaces a member before the third claim is served.
    paused = f'vmsandbox_agent_pool_paused{{namespace="{cluster.namespace}",pool="{pool}"}} 1.0'
    patch_spec(cluster, pool, paused=True)
    wait_for("the agent to hold the pool paused", lambda: paused in agent.get("/metrics").text)
    spec = registry.sandbox(
        ["sh", "-c", "hostname; head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \\n'; sleep 600"],
        hypervisor=hypervisor,
        resources=RESOURCES,
        pool=pool,
    )
    names = [unique("claim") for _ in range(3)]
    uids = [cluster.create_sandbox(name, spec)["metadata"]["uid"] for name in names]
    statuses = {n: cluster.wait_phase(n, "Running", "Failed", timeout=240 if slow else 60) for n in names}
    failed = {
        n: (s.get("reason"), (s.get("message") or "")[:400])
        for n, s in statuses.items()
        if s["phase"] != "Running"
    }
    assert not failed, failed
    warm = [n for n in names if condition(statuses[n], "WarmStart").get("status") == "True"]
    cold = [n for n in names if n not in warm]
    assert len(warm) == 2 and len(cold) == 1, {n: condition(s, "WarmStart") for n, s in statuses.items()}
    for name in warm:
        assert condition(statuses[name], "WarmStart")["reason"] == "ClaimedFromPool"
        assert statuses[name]["vm"]["vmmPID"] in idle.values()
        assert statuses[name]["bootTimings"]["claim"] > 0
    why = condition(statuses[cold[0]], "WarmStart")
    assert (why["status"], why["reason"]) == ("False", "PoolEmpty") and pool in why["message"]
    outputs = {}
    for name, uid in zip(names, uids, strict=True):
        log = agent.state_dir / "sandboxes" / uid / "container.log"
        outputs[name] = wait_for(
            f"{name}'s output",
            lambda p=log: p.exists() and len(w := p.read_text().split()) >= 2 and w,  # type: ignore[misc]
            timeout=120,
        )
        assert outputs[name][0] == name, "each sandbox runs under its own hostname"
    assert outputs[warm[0]][1] != outputs[warm[1]][1], "claimed siblings share random bytes"

    def paused_ready() -> dict[str, Any] | None:
        ready = condition(_pool_status(cluster, pool), "Ready")
        return ready if ready.get("reason") == "Paused" else None

    ready = wait_for("the pool's Ready condition to say it is paused", paused_ready, timeout=60)
    assert ready["status"] == "False" and "spec.paused" in ready["message"], ready
    patch_spec(cluster, pool, paused=False)
    _wait_pool_ready(cluster, pool, 2, timeout=300 if slow else 60)  # refilled once resumed

    patch_spec(cluster, pool, replicas=0)  # idle members go, claimed sandboxes stay
    wait_for("idle members deleted", lambda: not members(agent.runtime_root), timeout=60)
    delete_pool(cluster, pool)
    for name in warm:
        assert cluster.status(name)["phase"] == "Running"
        assert pid_alive(statuses[name]["vm"]["vmmPID"])
    for name in names:
        cluster.delete(name)
    for name in names:
        cluster.wait_gone(name, timeout=90)
    for name in names:
        pid = statuses[name]["vm"]["vmmPID"]
        wait_for(f"VMM {pid} to stop", lambda p=pid: not pid_alive(p), timeout=30)  # type: ignore[misc]
    node = cluster.node(agent.node)["metadata"]["annotations"]
    assert json.loads(node.get("vmsandbox.io/pools") or "{}") == {}
