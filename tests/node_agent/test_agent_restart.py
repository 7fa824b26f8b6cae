"""The agent dies and comes back: running VMs are adopted, vanished ones handled, orphans cleaned up."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.node_agent.support import (
    AgentProcess,
    Cluster,
    MakeAgent,
    Registry,
    containers_left,
    pid_alive,
    unique,
    wait_for,
)

pytestmark = pytest.mark.kube


def _sleeper(registry: Registry, **extra: object) -> dict[str, object]:
    return {"image": registry.busybox, "command": ["sleep", "600"], **extra}


def _running_sleeper(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry, prefix: str, **extra: object
) -> tuple[AgentProcess, str, int]:
    """A new agent and a sleeper on its node, once Running: the agent, the sleeper's name and its
    VMM's pid."""
    agent = make_agent()
    name = unique(prefix)
    cluster.create_sandbox(name, _sleeper(registry, **extra), node=agent.node)
    vmm: int = cluster.wait_phase(name, "Running", timeout=60)["vm"]["vmmPID"]
    return agent, name, vmm


def test_sigkilled_agent_adopts_its_five_running_vms(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    names = [unique(f"adopt{i}") for i in range(5)]
    for i, name in enumerate(names):
        hypervisor = "cloud-hypervisor" if i % 2 else "process"
        cluster.create_sandbox(name, _sleeper(registry, hypervisor=hypervisor), node=agent.node)
    before = {name: cluster.wait_phase(name, "Running", timeout=90) for name in names}
    objects = {name: cluster.get(name) for name in names}
    vmms = {name: s["vm"]["vmmPID"] for name, s in before.items()}
    assert all(pid_alive(pid) for pid in vmms.values())

    agent.kill()
    assert all(pid_alive(pid) for pid in vmms.values()), "VMs must outlive the agent"
    agent.start()
    agent.wait_logged("five adoptions in the agent's log", "adopted running VM", 5)
    time.sleep(2)  # a few monitor rounds
    for name in names:
        after = cluster.get(name)
        assert after is not None
        assert after["status"] == before[name], f"{name}: status changed on adoption"
        assert after["metadata"]["resourceVersion"] == objects[name]["metadata"]["resourceVersion"]  # type: ignore[index]
        assert pid_alive(vmms[name]), f"{name}: VMM {vmms[name]} is gone"
    assert "vmsandbox_agent_adopted_vms_total 5.0" in agent.get("/metrics").text
    second_run = (agent.workdir / "agent-2.log").read_text()
    assert "running (VMM pid" not in second_run, "no VM may be booted again"

    # Adopted VMs are still managed: stopping one's container is noticed and reported.
    cluster.delete(names[0])
    cluster.wait_gone(names[0], timeout=30)
    wait_for("the deleted sandbox's VMM to exit", lambda: not pid_alive(vmms[names[0]]), timeout=10)


@pytest.mark.parametrize("policy,expect", [("Never", "Failed"), ("OnFailure", "restart")])
def test_vm_killed_behind_the_agents_back_is_handled_by_policy(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry, policy: str, expect: str
) -> None:
    _, name, vmm = _running_sleeper(
        make_agent, cluster, registry, "vmkill", restartPolicy=policy, hypervisor="cloud-hypervisor"
    )
    os.kill(vmm, signal.SIGKILL)
    killed = time.monotonic()
    if expect == "Failed":
        status = cluster.wait_phase(name, "Failed", timeout=10)
        assert status["reason"] == "VMLost"
        assert f"pid {vmm}" in status["message"]
    else:
        wait_for(
            "a restart",
            lambda: (cluster.status(name).get("restartCount") or 0) >= 1,
            timeout=10,
            interval=0.05,
        )
        status = cluster.status(name)
        assert status["reason"] == "CrashLoopBackOff" and "VMM" in status["message"]
    assert time.monotonic() - killed <= 5.0, "detection must take at most 5 s"
    if expect == "restart":

        def new_vm() -> int | None:
            s = cluster.status(name)
            pid = (s.get("vm") or {}).get("vmmPID")
            return pid if s.get("phase") == "Running" and pid and pid != vmm else None

        new_vmm = wait_for("a new VM", new_vm, timeout=60)
        assert pid_alive(new_vmm)


def test_vm_that_vanished_while_the_agent_was_down(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent, name, vmm = _running_sleeper(make_agent, cluster, registry, "vanish")
    agent.kill()
    os.killpg(os.getpgid(vmm), signal.SIGKILL)
    wait_for("the VMM to die", lambda: not pid_alive(vmm), timeout=5)
    agent.start()
    status = cluster.wait_phase(name, "Failed", timeout=20)
    assert status["reason"] == "VMLost"


def test_orphaned_vm_is_torn_down_after_the_grace_period(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent, name, vmm = _running_sleeper(make_agent, cluster, registry, "orphan")
    agent.kill()
    # While the agent is down the sandbox goes away for good (its finalizer removed by force).
    cluster.remove_agent_finalizer(name)
    cluster.delete(name)
    cluster.wait_gone(name)
    assert pid_alive(vmm)
    agent.start()
    started = time.monotonic()
    wait_for("the orphan to be torn down", lambda: not pid_alive(vmm), timeout=20)
    assert time.monotonic() - started >= 1.5, "the grace period (2 s) must be honoured"
    wait_for("the runtime state to be freed", lambda: not containers_left(agent.runtime_root), timeout=10)
    wait_for("the record to be freed", lambda: not any((agent.state_dir / "sandboxes").iterdir()), timeout=10)
    assert any("orphaned container" in line.get("msg", "") for line in agent.log_lines())


def test_lease_and_node_registration(make_agent: MakeAgent, cluster: Cluster) -> None:
    import json

    agent = make_agent()
    lease = cluster.lease(f"vmsandbox-agent-{agent.node}")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == agent.node
    first = lease["spec"]["renewTime"]
    wait_for(
        "the lease to be renewed",
        lambda: (
            (cluster.lease(f"vmsandbox-agent-{agent.node}") or {}).get("spec", {}).get("renewTime") != first
        ),
        timeout=10,
    )
    node = cluster.node(agent.node)
    assert node["metadata"]["labels"]["vmsandbox.io/agent"] == "ready"
    capacity = json.loads(node["metadata"]["annotations"]["vmsandbox.io/capacity"])
    assert capacity["hypervisors"] == ["process", "cloud-hypervisor"]
    assert capacity["defaultHypervisor"] == "process"
    assert capacity["vcpus"] == 64  # capacityVcpus of the tests' agent configuration
    assert capacity["memoryMiB"] > 0 and isinstance(capacity["kvm"], bool) and capacity["agentVersion"]
    assert agent.get("/healthz").status_code == 200
    assert agent.get("/readyz").text.strip() == "ok"
    assert agent.get("/logs/nope/missing").status_code == 404


def test_agent_killed_mid_create_leaves_no_vm_once_restarted(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    """The agent dies between the VMM's start and the record of it (as a container restart
    would kill it): the restarted agent sweeps the stray VMM, then runs the sandbox once."""
    from tests.leaks import pids_mentioning
    from vmsandbox.runtime.faults import KILL_AT_ENV

    agent = make_agent(**{KILL_AT_ENV: "create-sandbox"})
    name = unique("midcreate")
    cluster.create_sandbox(name, _sleeper(registry, hypervisor="process"), node=agent.node)
    assert agent.proc is not None
    wait_for(
        "the agent killed mid-create", lambda: agent.proc is not None and agent.proc.poll() is not None, 60
    )
    vms = agent.runtime_root / ".vms"
    stray = pids_mentioning(str(vms))
    assert stray, "the VMM of the interrupted create outlived the agent"
    del agent.env[KILL_AT_ENV]
    agent.start()
    status = cluster.wait_phase(name, "Running", timeout=90)
    assert not any(pid_alive(pid) for pid in stray), "the stray VMM was stopped"
    assert "rolled back a create whose creator died" in agent.logs()
    assert containers_left(agent.runtime_root) == [status["container"]["id"]]
    live = [d.name for d in vms.iterdir() if not d.name.startswith(".")]
    assert len(live) == 1, f"one VM directory for the one sandbox: {live}"


def test_a_stopping_agent_marks_its_node_unschedulable_until_the_next_one_starts(
    make_agent: MakeAgent, cluster: Cluster
) -> None:
    agent = make_agent()
    label = "vmsandbox.io/agent"
    assert cluster.node(agent.node)["metadata"]["labels"][label] == "ready"
    agent.stop()
    assert agent.proc is not None and agent.proc.returncode == 0
    assert cluster.node(agent.node)["metadata"]["labels"][label] == "stopping"
    agent.start()
    wait_for(
        "the node to be ready again", lambda: cluster.node(agent.node)["metadata"]["labels"][label] == "ready"
    )
