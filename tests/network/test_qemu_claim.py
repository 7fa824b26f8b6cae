"""Warm claims with a network, in real QEMU guests (TCG here): a pool member booted without a NIC,
or a copy of a snapshot taken without one, gets the sandbox's NIC hot-plugged at the claim.

The container sees eth0 with the sandbox's MAC and address and reaches a server in the test's
own "world" namespace through the node's bridge and policy; after the sandbox is deleted and its
network freed, nothing remains (lease, tap, rules). A claim failing after the hot-plug rolls
back the same way. Everything runs in the namespaces the test made (tests/network/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.leaks import private_cgroup_parent
from tests.network.conftest import DNS, HERE, PRIVATE, PUBLIC, SUBNET, Topology, reach_probe, sh
from tests.qemu.conftest import guest_image, qemu_binary, vmm_user
from tests.runtime.support import pod_bundle, short_root
from vmsandbox.node_agent.network.ipam import mac_of
from vmsandbox.runtime.faults import NIC_STEP
from vmsandbox.runtime.members import MEMBER_ANNOTATION, new_member_id
from vmsandbox.runtime.snapshots import ANNOTATION_RESTORE_FROM

pytestmark = pytest.mark.vm
__all__ = ["guest_image", "qemu_binary", "vmm_user"]  # fixtures, used by name

SANDBOX_IP = "10.250.7.2"
SCRIPT = " ; ".join(
    [
        "echo mac $(cat /sys/class/net/eth0/address)",
        "busybox ip -4 -o addr show dev eth0",
        "busybox ip route show",
        "cat /etc/resolv.conf",
        reach_probe(PUBLIC, wait=3),
        reach_probe(PRIVATE, wait=3),
    ]
)


def _claim(topo: Topology, image: Path, root: Path, bundle: Path, owner: str, *extra: str) -> str:
    """Run claim_sandbox.py in the node namespace; its VMs' cgroups must all be gone after it."""
    argv = [sys.executable, str(HERE / "claim_sandbox.py"), str(topo.state_dir), SUBNET, topo.bridge]
    argv += [str(root), str(bundle), owner, "restricted", "--resolver", DNS, *extra]
    with private_cgroup_parent("claim") as parent:
        return sh(
            *topo.in_node("env", f"VMSANDBOX_GUEST_IMAGE_DIR={image}", *argv, "--cgroup-parent", parent)
        )


def _assert_nothing_left(topo: Topology) -> None:
    assert topo.net("leases") == [], "the lease is freed"
    assert not [link for link in topo.node_links() if link.startswith("tsb")], "the tap is gone"
    assert SANDBOX_IP not in topo.node_ruleset(), "the sandbox's rules are gone"


def _assert_networked(out: str, owner: str) -> None:
    assert f"mac {mac_of(SANDBOX_IP)}" in out, out
    assert f"inet {SANDBOX_IP}/24" in out, out
    assert "default via 10.250.7.1 dev eth0" in out, out
    assert f"nameserver {DNS}" in out, out
    assert f"reached {PUBLIC}" in out, "the world is reached through the node's bridge"
    assert f"blocked {PRIVATE}" in out, "restricted mode's policy holds for a claimed VM too"
    del owner


def test_a_booted_member_claimed_with_a_network_gets_its_own_nic(
    topo: Topology, guest_image: Path, tmp_path: Path
) -> None:
    member, baseline = new_member_id(), new_member_id()
    bundle = pod_bundle(tmp_path / "bundle", SCRIPT, {MEMBER_ANNOTATION: member})
    plain = pod_bundle(tmp_path / "plain", "true", {MEMBER_ANNOTATION: baseline})
    root = short_root()
    try:
        out = _claim(
            topo,
            guest_image,
            root,
            bundle,
            "warm-net",
            "--member",
            member,
            "--baseline-member",
            baseline,
            "--baseline-bundle",
            str(plain),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _assert_networked(out, "warm-net")
    figures = dict(line.split() for line in out.splitlines() if line.startswith(("claim ", "baseline ")))
    print(json.dumps({"claim_ms": float(figures["claim"]), "baseline_claim_ms": float(figures["baseline"])}))
    _assert_nothing_left(topo)


def test_a_snapshot_copy_claimed_with_a_network_gets_its_own_nic(
    topo: Topology, guest_image: Path, tmp_path: Path
) -> None:
    bundle = pod_bundle(tmp_path / "bundle", SCRIPT, {ANNOTATION_RESTORE_FROM: "netsnap"})
    root = short_root()
    try:
        out = _claim(topo, guest_image, root, bundle, "warm-snap", "--snapshot", "netsnap")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _assert_networked(out, "warm-snap")
    _assert_nothing_left(topo)


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (("--fail-at", NIC_STEP), NIC_STEP),  # after the hot-plug, before the guest configures it
        (("--hold-tap",), "Device or resource busy"),  # the hot-plug itself fails
    ],
    ids=["guest-configure", "hot-plug"],
)
def test_a_claim_failing_at_its_nic_leaves_nothing(
    topo: Topology, guest_image: Path, tmp_path: Path, fault: tuple[str, ...], words: str
) -> None:
    """The create's rollback unplugs the NIC (when it was plugged) and stops the member's VM;
    the agent's teardown then frees the lease, the tap and the rules."""
    member = new_member_id()
    bundle = pod_bundle(tmp_path / "bundle", SCRIPT, {MEMBER_ANNOTATION: member})
    root = short_root()
    try:
        out = _claim(topo, guest_image, root, bundle, "warm-fail", "--member", member, *fault)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert "create failed:" in out and words in out, out
    assert "records: none" in out and "vm dirs: none" in out, out
    assert not [p for p in sh("ps", "-eo", "args").splitlines() if str(root) in p], "a VMM survived"
    _assert_nothing_left(topo)
