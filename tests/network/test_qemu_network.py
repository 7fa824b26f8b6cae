"""A real QEMU guest (TCG) on the node's bridge: virtio-net on the tap, addresses (IPv4 and IPv6)
from the kernel command line, and the same policy as every other sandbox. One boot, so it stays
affordable."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.network.conftest import (
    DNS,
    GATEWAY6,
    HERE,
    METADATA,
    NODE_UPLINK6,
    PREFIX6,
    PRIVATE,
    PUBLIC,
    PUBLIC6,
    SUBNET,
    ULA,
    Topology,
    reach_probe,
    sh,
)
from tests.qemu.conftest import guest_image, qemu_binary, vmm_user
from tests.runtime.support import pod_bundle, short_root
from vmsandbox.hypervisor.vmmuser import VmmUser

pytestmark = pytest.mark.vm
__all__ = ["guest_image", "qemu_binary", "vmm_user"]  # fixtures, used by name


def test_guest_nic_under_restricted_with_an_allow(
    topo: Topology, guest_image: Path, tmp_path: Path, vmm_user: VmmUser
) -> None:
    targets = (PUBLIC, PRIVATE, METADATA, PUBLIC6, ULA, NODE_UPLINK6, GATEWAY6)
    shows = ["busybox ip -4 -o addr show dev eth0", "busybox ip -6 -o addr show dev eth0"]
    script = " ; ".join([*shows, "busybox ip -6 route show", *(reach_probe(a, wait=3) for a in targets)])
    bundle = pod_bundle(tmp_path / "bundle", script)
    root = short_root()
    try:
        argv = [sys.executable, str(HERE / "run_sandbox.py"), str(topo.state_dir), SUBNET, topo.bridge]
        argv += [str(root), str(bundle), "qemu-allow", "restricted", "--resolver", DNS]
        argv += ["--allow", f"{PRIVATE}/32", "--subnet6", PREFIX6, "--hypervisor", "qemu"]
        env_argv = ["env", f"VMSANDBOX_GUEST_IMAGE_DIR={guest_image}", *argv]
        out = sh(*topo.in_node(*env_argv))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert "inet 10.250.7.2/24" in out, out
    ids = f"{vmm_user.uid}:{vmm_user.gid}"
    assert f"vmm {ids} tap owner {vmm_user.name}" in out, "QEMU runs as the VMM user, on a tap it owns"
    assert f"reached {PUBLIC}" in out and f"reached {PRIVATE}" in out, out
    assert f"blocked {METADATA}" in out, out
    assert "inet6 fd76:7362:afa:700::2/64" in out, "the node's address"
    assert "inet6 fe80::76:73ff:fefa:702/64" in out, "the link-local address the node expects (EUI-64)"
    assert f"default via {GATEWAY6} dev eth0" in out, out
    assert f"reached {PUBLIC6}" in out, "IPv6 egress through the gateway's NAT66"
    for blocked in (ULA, NODE_UPLINK6, GATEWAY6):
        assert f"blocked {blocked}" in out, out
    assert topo.net("leases") == [], "the lease is freed after delete"
    assert not [link for link in topo.node_links() if link.startswith("tsb")], "the tap is gone"
