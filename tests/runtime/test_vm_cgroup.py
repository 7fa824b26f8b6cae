"""Each pod sandbox's VM runs in a cgroup of its own, limited to the VM's size and outside its
creator's, with no process of it a child of the creator; deleting the sandbox removes the cgroup."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.leaks import private_cgroup_parent
from tests.runtime.conftest import BundleFactory, cri_container, process_runtime
from vmsandbox.hypervisor import forkserver
from vmsandbox.hypervisor.cgroups import CFS_PERIOD_US, VMCgroup, hierarchies
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.detached import spawn_detached
from vmsandbox.hypervisor.procs import running
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.state import VMS_DIR
from vmsandbox.runtime.vmsize import ANNOTATION_MEMORY_MIB, ANNOTATION_VCPUS

OVERHEAD_MIB = 100
MIB = 1024 * 1024


@pytest.fixture
def parent() -> Iterator[str]:
    """A cgroup parent for this test alone; nothing may be left under it afterwards."""
    with private_cgroup_parent("r") as path:
        yield path


@pytest.fixture
def crt(parent: str) -> Iterator[Runtime]:
    with process_runtime(HypervisorConfig(cgroup_parent=parent, vmm_overhead_mib=OVERHEAD_MIB)) as runtime:
        yield runtime


def _value(cgroup: VMCgroup, controller: str, v1: str, v2: str) -> str:
    hierarchy = next(h for h in hierarchies() if controller in h.controllers)
    name = v2 if hierarchy.version == 2 else v1
    return (hierarchy.mount / cgroup.path / name).read_text().strip()


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_the_vm_cgroup_limits_and_holds_the_vm(crt: Runtime, parent: str, make_bundle: BundleFactory) -> None:
    annotations = {ANNOTATION_VCPUS: "2", ANNOTATION_MEMORY_MIB: "300"}
    sandbox = crt.create("cgsb", make_bundle(["sleep", "600"], annotations=annotations))
    crt.start("cgsb")
    member = crt.create("cgm", make_bundle(["sleep", "600"], annotations=cri_container("cgsb")))
    crt.start("cgm")
    cgroup = VMCgroup(f"{parent}/cgsb")
    assert all(d.is_dir() for d in cgroup.dirs()), "the VM's cgroup is in every hierarchy"
    assert not VMCgroup(f"{parent}/cgm").exists(), "a pod container joins its sandbox's cgroup"

    memory = _value(cgroup, "memory", "memory.limit_in_bytes", "memory.max")
    assert int(memory) == (300 + OVERHEAD_MIB) * MIB
    if next(h for h in hierarchies() if "cpu" in h.controllers).version == 2:
        assert _value(cgroup, "cpu", "", "cpu.max") == f"{2 * CFS_PERIOD_US} {CFS_PERIOD_US}"
    else:
        assert int(_value(cgroup, "cpu", "cpu.cfs_quota_us", "")) == 2 * CFS_PERIOD_US

    assert sandbox.vm is not None
    vmm = sandbox.vm.vmm_pid
    members = cgroup.pids()
    assert {vmm, sandbox.pid, member.pid} <= members, "VMM and both relays are in it"
    assert os.getpid() not in members
    # Sessions of their own; the VMM's parent is the state root's fork server (it forked the
    # agent), the relays' this test process only because it is a subreaper, as containerd's
    # shim is.
    for pid in (vmm, sandbox.pid, member.pid):
        assert os.getsid(pid) != os.getsid(0), f"{pid} shares its creator's session"
    assert f"{_parent_of(vmm)} " in forkserver.server_identity(crt.root / VMS_DIR)
    # The containers too, below the VM's cgroup, so its limits hold them.
    memory_dir = next(h for h in hierarchies() if "memory" in h.controllers).mount / cgroup.path
    nested = [d for d in memory_dir.rglob("*") if d.is_dir()]
    assert nested, "the process backend's containers live below the VM's cgroup"

    crt.delete("cgm", force=True)
    crt.delete("cgsb", force=True)
    assert not cgroup.exists(), "deleting the sandbox removes its cgroup"
    assert not running(vmm)


def test_the_exit_code_outlives_the_vm(crt: Runtime, make_bundle: BundleFactory) -> None:
    """The relay writes the exit code, so it is known even once the VM is gone."""
    state = crt.create("cgexit", make_bundle(["sh", "-c", "exit 7"]))
    crt.start("cgexit")
    deadline = time.monotonic() + 20
    while running(state.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.vm is not None
    os.killpg(os.getpgid(state.vm.vmm_pid), 9)
    while running(state.vm.vmm_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = crt.state("cgexit")
    assert after.status == "stopped" and after.exit_code == 7


def test_sweep_removes_cgroups_no_container_owns(crt: Runtime, parent: str, tmp_path: Path) -> None:
    """A create killed after making the cgroup: the next sweep removes it, and only it."""
    stray, busy = VMCgroup(f"{parent}/gone"), VMCgroup(f"{parent}/busy")
    stray.create(None)
    busy.create(None)
    with (tmp_path / "log").open("wb") as log:
        sleeper = spawn_detached(["sleep", "60"], log=log, cgroup_procs=busy.procs_files())
    try:
        done = crt.sweep()
        assert any(line.startswith("gone: ") for line in done), done
        assert not stray.exists()
        assert busy.exists(), "a cgroup with processes in it is never swept"
    finally:
        busy.remove()
    assert not running(sleeper.pid)


def test_a_detached_program_reports_its_exit_status(tmp_path: Path) -> None:
    with (tmp_path / "log").open("wb") as log:
        proc = spawn_detached(["sh", "-c", "echo out; exit 5"], log=log, status_file=tmp_path / "status")
        killed = spawn_detached(["sleep", "60"], log=log, status_file=tmp_path / "killed")
    assert proc.wait(10) == 5
    assert (tmp_path / "log").read_text().strip() == "out"
    with pytest.raises(subprocess.TimeoutExpired):
        killed.wait(0.1)
    os.kill(killed.pid, 9)
    assert killed.wait(10) == -9


def test_siblings_made_at_once_under_a_new_parent_can_all_be_joined(parent: str) -> None:
    """Two VMs' cgroups made at the same instant share a parent that one of them creates: the
    other must never make its own under a v1 cpuset that is still empty (no process could join)."""
    import threading

    # Where v1 mounts cpuset the race is real; every host checks that each sibling is joinable.
    v1_cpuset = [h for h in hierarchies() if h.version == 1 and "cpuset" in h.controllers]
    for round_ in range(10):
        siblings = [VMCgroup(f"{parent}/n{round_}/vm{i}") for i in range(6)]
        start = threading.Barrier(len(siblings))

        def make(cgroup: VMCgroup, barrier: threading.Barrier) -> None:
            barrier.wait()
            cgroup.create(None)

        threads = [threading.Thread(target=make, args=(c, start)) for c in siblings]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            for cgroup in siblings:
                for hierarchy in v1_cpuset:
                    cpus = (hierarchy.mount / cgroup.path / "cpuset.cpus").read_text().strip()
                    assert cpus, f"{cgroup.path}: empty cpuset.cpus"
                cgroup.join(sleeper.pid)  # raises where a process cannot join (an empty cpuset)
                assert sleeper.pid in cgroup.pids()
        finally:
            sleeper.kill()
            sleeper.wait()
            for cgroup in siblings:
                cgroup.remove(kill=False)
            VMCgroup(f"{parent}/n{round_}").remove(kill=False)
