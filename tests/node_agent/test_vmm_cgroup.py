"""VMs live outside the node agent's cgroup, in limited cgroups of their own: they outlive the
agent's death and the death of every process in its cgroup (what a container runtime does when it
restarts the agent's container), and the next agent adopts them without rebooting any."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.leaks import private_cgroup_parent
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, pid_alive, unique, wait_for
from vmsandbox.hypervisor.cgroups import CFS_PERIOD_US, Hierarchy, VMCgroup, hierarchies
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.runtime import Runtime

pytestmark = pytest.mark.kube

MIB = 1024 * 1024
OVERHEAD_MIB = 200
#: Prints a line a second; exits 3 on SIGTERM.
TICKER = 'trap "exit 3" TERM; while true; do echo tick; sleep 1; done'
MIXES = [
    pytest.param(("process",) * 5, id="process"),
    pytest.param(("process",) * 3 + ("qemu",) * 2, id="process+qemu", marks=pytest.mark.vm),
]
IMAGE_FILES = ("vmlinuz", "initramfs.img", "rootfs.img")


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    """A parent of the agent's VM cgroups for this test alone; nothing may be left under it."""
    with private_cgroup_parent("t") as parent:
        yield parent


@pytest.fixture
def agent_cgroup() -> Iterator[VMCgroup]:
    """The agent's own cgroup, in every hierarchy, as its container's would be."""
    cgroup = VMCgroup(f"vmsandbox-test-agent-{uuid.uuid4().hex[:10]}")
    cgroup.create(None)
    yield cgroup
    cgroup.remove()


def _guest_image() -> Path:
    configured = os.environ.get("VMSANDBOX_GUEST_IMAGE_DIR")
    path = Path(configured) if configured else Path.home() / ".cache" / "vmsandbox" / "guest-image"
    if not all((path / name).is_file() for name in IMAGE_FILES):
        if os.environ.get("VMSANDBOX_REQUIRE_VM") == "1":
            pytest.fail(f"VMSANDBOX_REQUIRE_VM=1 but there is no guest image in {path}")
        pytest.skip(f"no guest image in {path}")
    return path


def _one(found: list[Hierarchy], controller: str) -> Hierarchy:
    return next(h for h in found if controller in h.controllers)


def _limits(cgroup: VMCgroup) -> tuple[int, int]:
    """(memory limit in bytes, CPU quota per 100 ms period in µs) as the kernel reports them."""
    found = hierarchies()
    memory, cpu = _one(found, "memory"), _one(found, "cpu")
    if memory.version == 2:
        mem = int((memory.mount / cgroup.path / "memory.max").read_text())
    else:
        mem = int((memory.mount / cgroup.path / "memory.limit_in_bytes").read_text())
    if cpu.version == 2:
        quota, period = (cpu.mount / cgroup.path / "cpu.max").read_text().split()
    else:
        quota = (cpu.mount / cgroup.path / "cpu.cfs_quota_us").read_text()
        period = (cpu.mount / cgroup.path / "cpu.cfs_period_us").read_text()
    assert int(period) == CFS_PERIOD_US
    return mem, int(quota)


def _check_cgroups(
    statuses: dict[str, dict[str, Any]], sizes: dict[str, tuple[int, int]], parent: str, agent: VMCgroup
) -> None:
    agent_pids = agent.pids()
    assert agent_pids, "the agent runs in its own cgroup"
    for name, status in statuses.items():
        cgroup = VMCgroup(f"{parent}/{status['container']['id']}")
        assert all(d.is_dir() for d in cgroup.dirs()), f"{name}: its cgroup is in every hierarchy"
        vcpus, memory_mib = sizes[name]
        assert _limits(cgroup) == ((memory_mib + OVERHEAD_MIB) * MIB, vcpus * CFS_PERIOD_US), name
        members = cgroup.pids()
        vmm, relay = status["vm"]["vmmPID"], status["container"]["pid"]
        assert {vmm, relay} <= members, f"{name}: VMM {vmm} and relay {relay} in {sorted(members)}"
        assert not members & agent_pids, f"{name}: shares processes with the agent's cgroup"


def _log_size(agent: AgentProcess, obj: dict[str, Any]) -> int:
    path = agent.state_dir / "sandboxes" / obj["metadata"]["uid"] / "container.log"
    return path.stat().st_size if path.exists() else 0


def _adoptions(agent: AgentProcess) -> int:
    return agent.log_path.read_text(errors="replace").count("adopted running VM")


def _outage(
    cluster: Cluster,
    agent: AgentProcess,
    names: list[str],
    kill: Callable[[], None],
    exiting: str,
) -> None:
    """Kill the agent with ``kill``; meanwhile ``exiting``'s container exits 3; start it again."""
    running = [n for n in names if cluster.status(n).get("phase") == "Running"]
    assert exiting in running
    objects = {n: cluster.get(n) or {} for n in running}
    vmms = {n: objects[n]["status"]["vm"]["vmmPID"] for n in running}
    kill()
    assert all(pid_alive(pid) for pid in vmms.values()), "VMs must outlive the agent"

    runtime = Runtime(agent.runtime_root, "process", HypervisorConfig())
    runtime.kill(objects[exiting]["status"]["container"]["id"], "TERM")
    wait_for(
        f"{exiting}'s container to exit",
        lambda: not pid_alive(objects[exiting]["status"]["container"]["pid"]),
    )
    stays = [n for n in running if n != exiting]
    sizes = {n: _log_size(agent, objects[n]) for n in stays}
    wait_for(
        "the logs to grow with no agent running",
        lambda: all(_log_size(agent, objects[n]) > sizes[n] for n in stays),
        timeout=20,
    )

    agent.start()
    ended = cluster.wait_phase(exiting, "Failed", timeout=60)
    assert ended["reason"] == "Error" and ended["container"]["exitCode"] == 3, ended
    wait_for(f"{len(stays)} adoptions", lambda: _adoptions(agent) >= len(stays), timeout=60)
    sizes = {n: _log_size(agent, objects[n]) for n in stays}
    wait_for(
        "the logs to go on growing", lambda: all(_log_size(agent, objects[n]) > sizes[n] for n in stays), 20
    )
    for name in stays:
        after = cluster.get(name) or {}
        assert after["status"] == objects[name]["status"], f"{name}: status changed on adoption"
        assert after["metadata"]["resourceVersion"] == objects[name]["metadata"]["resourceVersion"]
        assert pid_alive(vmms[name]), f"{name}: VMM {vmms[name]} is gone"
    assert "running (VMM pid" not in agent.log_path.read_text(), "no VM may be booted again"


@pytest.mark.parametrize("mix", MIXES)
def test_vms_outlive_the_agent_and_its_whole_cgroup(
    make_agent: MakeAgent,
    cluster: Cluster,
    registry: Registry,
    cgroup_parent: str,
    agent_cgroup: VMCgroup,
    mix: tuple[str, ...],
) -> None:
    qemu = "qemu" in mix
    env = {
        "VMSANDBOX_AGENT_VMM_CGROUP_PARENT": cgroup_parent,
        "VMSANDBOX_AGENT_VMM_OVERHEAD_MIB": str(OVERHEAD_MIB),
        "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "process,qemu" if qemu else "process",
    }
    if qemu:
        env["VMSANDBOX_AGENT_GUEST_IMAGE_DIR"] = str(_guest_image())
        env["VMSANDBOX_AGENT_ALLOW_TCG"] = "true"
    agent = make_agent(start=False, **env)
    agent.cgroup_procs = agent_cgroup.procs_files()
    agent.start()

    names = [unique(f"cg{i}") for i in range(len(mix))]
    sizes: dict[str, tuple[int, int]] = {}
    for i, (name, hypervisor) in enumerate(zip(names, mix, strict=True)):
        sizes[name] = (1 + i % 2, 256 + 64 * i)
        spec = registry.sandbox(
            ["sh", "-c", TICKER],
            hypervisor=hypervisor,
            restartPolicy="Never",
            resources={"vcpus": sizes[name][0], "memoryMiB": sizes[name][1]},
        )
        cluster.create_sandbox(name, spec, node=agent.node)
    statuses = {n: cluster.wait_phase(n, "Running", timeout=400 if qemu else 90) for n in names}
    _check_cgroups(statuses, sizes, cgroup_parent, agent_cgroup)

    # 1: the agent alone is SIGKILLed (an OOM kill).
    _outage(cluster, agent, names, agent.kill, exiting=names[0])

    # 2: every process of the agent's cgroup is SIGKILLed (its container restarted).
    def kill_cgroup() -> None:
        agent_cgroup.kill()
        assert agent.proc is not None
        agent.proc.wait(10)

    _outage(cluster, agent, names, kill_cgroup, exiting=names[1])
    statuses = {n: cluster.status(n) for n in names[2:]}
    _check_cgroups(statuses, sizes, cgroup_parent, agent_cgroup)

    # Deleting a sandbox removes its cgroup; the fixture checks that none is left.
    for name in names:
        cluster.delete(name)
    for name in names:
        cluster.wait_gone(name, timeout=60)
    for name, status in statuses.items():
        cgroup = VMCgroup(f"{cgroup_parent}/{status['container']['id']}")
        assert not cgroup.exists(), f"{name}: its cgroup outlived the sandbox"
        assert not pid_alive(status["vm"]["vmmPID"])
