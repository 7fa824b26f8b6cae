"""Warm claims of real QEMU guests (TCG here): each claimed VM runs its container with its own
hostname, boot id and random state, and its clock set from the host's; on a node with a sandbox
network, a claimed VM gets the sandbox's own NIC."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.network.conftest import PRIVATE, PUBLIC, PUBLIC6, Topology, reach_probe, topo
from tests.node_agent.pools import condition, create_pool, delete_pool, members, share, wait_ready
from tests.node_agent.support import (
    AgentProcess,
    Cluster,
    MakeAgent,
    Registry,
    network_agent,
    pid_alive,
    unique,
    wait_for,
)
from tests.qemu.conftest import guest_image, qemu_binary, vmm_user
from tests.qemu.pool_agent import qemu_pool_agent_env

__all__ = ["guest_image", "qemu_binary", "topo", "vmm_user"]
pytestmark = [pytest.mark.kube, pytest.mark.vm]

TEMPLATE = {"resources": {"vcpus": 1, "memoryMiB": 256}, "hypervisor": "qemu"}
#: hostname, boot id, 64 random bytes and the guest's clock, one per line.
PROBE = (
    "hostname; cat /proc/sys/kernel/random/boot_id; "
    "head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; sleep 600"
)


def _output(agent: AgentProcess, uid: str) -> list[str]:
    path = agent.state_dir / "sandboxes" / uid / "container.log"
    return path.read_text().split() if path.exists() else []


def test_claimed_qemu_vms_run_with_their_own_identity(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry, guest_image: Path
) -> None:
    agent = make_agent(**qemu_pool_agent_env(guest_image, 30))
    pool = unique("qpool")
    create_pool(cluster, pool, TEMPLATE, 2)
    share(cluster, pool, agent.node, 2)
    wait_ready(cluster, agent, pool, 2, timeout=300)
    idle = members(agent.runtime_root)
    spec = registry.sandbox(
        ["sh", "-c", PROBE], hypervisor="qemu", resources={"vcpus": 1, "memoryMiB": 256}, pool=pool
    )
    names = [unique("qwarm"), unique("qwarm")]
    uids = [cluster.create_sandbox(name, spec, node=agent.node)["metadata"]["uid"] for name in names]
    statuses = [cluster.wait_phase(name, "Running", "Failed", timeout=180) for name in names]
    for status in statuses:
        assert status["phase"] == "Running", status
        warm = condition(status, "WarmStart")
        assert (warm["status"], warm["reason"]) == ("True", "ClaimedFromPool"), status
        assert status["vm"]["vmmPID"] in idle.values()
    outputs = [
        wait_for(f"{name}'s probe output", lambda u=uid: (o := _output(agent, u)) and len(o) >= 4 and o, 120)  # type: ignore[misc]
        for name, uid in zip(names, uids, strict=True)
    ]
    for name, out in zip(names, outputs, strict=True):
        assert out[0] == name, f"hostname {out[0]!r}, not the sandbox's name"
        assert abs(int(out[3]) - time.time()) < 120, "the guest clock was set from the host's"
    assert outputs[0][1] != outputs[1][1], "siblings share a boot id"
    assert len(outputs[0][2]) == 128 and outputs[0][2] != outputs[1][2], "siblings share random state"
    vmms = [s["vm"]["vmmPID"] for s in statuses]
    for name in names:
        cluster.delete(name)
    for name in names:
        cluster.wait_gone(name, timeout=60)
    for pid in vmms:
        wait_for(f"VMM {pid} to stop", lambda p=pid: not pid_alive(p), timeout=30)  # type: ignore[misc]
    delete_pool(cluster, pool)
    wait_for("members deleted with their pool", lambda: not members(agent.runtime_root), timeout=60)


NET_SCRIPT = " ; ".join(
    [
        "echo mac $(cat /sys/class/net/eth0/address)",
        "busybox ip -4 -o addr show dev eth0",
        "busybox ip -6 -o addr show dev eth0",
        *(reach_probe(a, wait=3) for a in (PUBLIC, PRIVATE, PUBLIC6)),
        "echo probes done",
        "sleep 600",
    ]
)


def test_a_networked_pool_on_a_network_node_serves_claims_with_their_own_nic(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry, guest_image: Path, topo: Topology
) -> None:
    """Members boot without a NIC; the claim sets up the sandbox's lease, tap and rules as a cold
    start does, and the VM gets its NIC hot-plugged (QEMU here, the plumbing in the test's node
    namespace: the tap reaches QEMU as a descriptor). Deleting the sandbox frees all of it."""
    agent = network_agent(make_agent, topo, **qemu_pool_agent_env(guest_image, 30))
    pool = unique("qnet")
    create_pool(cluster, pool, {**TEMPLATE, "network": {"mode": "restricted"}}, 1)
    share(cluster, pool, agent.node, 1)
    wait_ready(cluster, agent, pool, 1, timeout=300)
    idle = members(agent.runtime_root)
    spec = registry.sandbox(
        ["sh", "-c", NET_SCRIPT],
        hypervisor="qemu",
        resources={"vcpus": 1, "memoryMiB": 256},
        network={"mode": "restricted"},
        pool=pool,
    )
    name = unique("qnetwarm")
    cluster.create_sandbox(name, spec, node=agent.node)
    status = cluster.wait_phase(name, "Running", "Failed", timeout=180)
    assert status["phase"] == "Running", status
    warm = condition(status, "WarmStart")
    assert (warm["status"], warm["reason"]) == ("True", "ClaimedFromPool"), status
    assert status["vm"]["vmmPID"] in idle.values()
    network = status["network"]
    logs = wait_for(
        "the probes' output",
        lambda: (lambda t: t if "probes done" in t else None)(
            agent.get(f"/logs/{cluster.namespace}/{name}").text
        ),
        timeout=120,
    )
    assert f"mac {network['mac']}" in logs and f"inet {network['ip']}/24" in logs, logs
    assert f"reached {PUBLIC}" in logs and f"blocked {PRIVATE}" in logs, logs
    assert f"inet6 {network['ip6']}/64" in logs, "the node's IPv6 address too"
    assert f"reached {PUBLIC6}" in logs, logs
    leases = agent.state_dir / "network" / "leases"
    assert [p.name for p in leases.iterdir()] == [network["ip"]]
    cluster.delete(name)
    cluster.wait_gone(name, timeout=60)
    wait_for(
        f"VMM {status['vm']['vmmPID']} to stop", lambda: not pid_alive(status["vm"]["vmmPID"]), timeout=30
    )
    assert list(leases.iterdir()) == [], "the lease is freed"
    assert not [link for link in topo.node_links() if link.startswith("tsb")], "the tap is gone"
    assert network["ip"] not in topo.node_ruleset(), "the sandbox's rules are gone"
    delete_pool(cluster, pool)
    wait_for("members deleted with their pool", lambda: not members(agent.runtime_root), timeout=60)
