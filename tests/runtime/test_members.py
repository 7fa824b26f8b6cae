"""Pool members in the runtime: a VM booted with no container, taken over by a sandbox's create."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.conftest import BundleFactory
from vmsandbox.hypervisor.cgroups import VMCgroup
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.runtime import Runtime, RuntimeError_
from vmsandbox.runtime.members import MEMBER_ANNOTATION, MemberUnavailable, new_member_id

SANDBOX = {"io.kubernetes.cri.container-type": "sandbox"}


def test_member_boots_idle_and_is_taken_by_a_create(rt: Runtime, make_bundle: BundleFactory) -> None:
    member = new_member_id()
    state = rt.boot_member(member, 1, 256)
    assert state.status == "created" and state.vm is not None
    vmm = state.vm.vmm_pid
    assert rt.state(member).status == "created"
    bundle = make_bundle(["sh", "-c", "echo hi"], annotations=SANDBOX | {MEMBER_ANNOTATION: member})
    created = rt.create("claimed", bundle)
    assert created.vm is not None and created.vm.vmm_pid == vmm, "the member's VM serves the sandbox"
    assert created.timings.claim is not None and created.timings.vmBoot == 0
    assert member not in rt.store.ids(), "the member's record went with its VM"
    rt.start("claimed")
    assert rt.wait("claimed", timeout=30) == 0
    rt.delete("claimed")
    assert rt.store.ids() == []
    assert rt.store.vm_dirs() == [], "deleting the sandbox stopped the member's VM"


def test_a_member_is_taken_once(rt: Runtime, make_bundle: BundleFactory) -> None:
    member = new_member_id()
    rt.boot_member(member, 1, 256)
    rt.create("first", make_bundle(["sleep", "30"], annotations=SANDBOX | {MEMBER_ANNOTATION: member}))
    with pytest.raises(MemberUnavailable):
        rt.create("second", make_bundle(["true"], annotations=SANDBOX | {MEMBER_ANNOTATION: member}))
    assert "second" not in rt.store.ids()
    assert len(rt.store.vm_dirs()) == 1


def test_sweep_keeps_a_claimed_vm_and_members(rt: Runtime, make_bundle: BundleFactory) -> None:
    idle, taken = new_member_id(), new_member_id()
    rt.boot_member(idle, 1, 256)
    rt.boot_member(taken, 1, 256)
    rt.create("claimed", make_bundle(["sleep", "30"], annotations=SANDBOX | {MEMBER_ANNOTATION: taken}))
    assert rt.sweep() == []
    assert len(rt.store.vm_dirs()) == 2
    rt.delete(idle, force=True)
    assert idle not in rt.store.ids() and len(rt.store.vm_dirs()) == 1


def test_invalid_bundle_leaves_the_member_idle(rt: Runtime, make_bundle: BundleFactory) -> None:
    member = new_member_id()
    rt.boot_member(member, 1, 256)

    def broken(config: dict[str, object]) -> None:
        config["process"] = {**config["process"], "cwd": "relative"}  # type: ignore[dict-item]

    bundle = make_bundle(["true"], annotations=SANDBOX | {MEMBER_ANNOTATION: member}, edit=broken)
    with pytest.raises(RuntimeError_):
        rt.create("bad", bundle)
    assert rt.store.ids() == [member] and rt.state(member).status == "created"


def test_a_process_member_is_not_claimed_into_a_network_namespace(
    rt: Runtime, make_bundle: BundleFactory
) -> None:
    """The process backend's agent started in the host's namespace before its sandbox existed:
    it cannot move into the sandbox's, so the claim fails (the node agent then starts cold)."""
    member = new_member_id()
    rt.boot_member(member, 1, 256)
    bundle = make_bundle(["true"], annotations=SANDBOX | {MEMBER_ANNOTATION: member})
    with pytest.raises(MemberUnavailable, match="network namespace /run/netns/vmsb-x"):
        rt.create("netted", bundle, network=NetworkAttachment(netns=Path("/run/netns/vmsb-x")))
    assert rt.store.ids() == [] and rt.store.vm_dirs() == [], "the taken member's agent was stopped"
    cgroup = VMCgroup(f"{rt.config.cgroup_parent}/{member}")
    assert not any(d.exists() for d in cgroup.dirs()), "and its cgroup removed"
