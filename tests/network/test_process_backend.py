"""The process backend under the node's policy: the guest agent and its container live in the
sandbox's own namespace, so what the container reaches is what the policy allows."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.network.conftest import DNS, HERE, PREFIX6, PRIVATE, PUBLIC, PUBLIC6, SUBNET, ULA, Topology, sh
from tests.runtime.support import make_rootfs, shared_network_config, short_root, write_bundle
from tests.tools import require_tools

GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
SCRIPT = " ; ".join(
    [
        "busybox ip -4 -o addr show dev eth0",
        f"{GET} | busybox nc -w 2 {PUBLIC} 80 | busybox tail -n 1 && echo",
        f"{GET} | busybox nc -w 2 {PRIVATE} 80 | busybox grep -q {PRIVATE} || echo {PRIVATE} blocked",
        "busybox ip -6 -o addr show dev eth0",
        f"{GET} | busybox nc -w 2 {PUBLIC6} 80 | busybox tail -n 1 && echo",
        f"{GET} | busybox nc -w 2 {ULA} 80 | busybox grep -q {ULA} || echo {ULA} blocked",
    ]
)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    require_tools("runc")
    # As the node agent writes it: the container shares its VM's (here: the agent's) network.
    config = shared_network_config(SCRIPT)
    return write_bundle(tmp_path / "bundle", config, rootfs=make_rootfs(tmp_path / "rootfs"))


def _run(topo: Topology, bundle: Path, owner: str, mode: str, *extra: str) -> str:
    root = short_root()
    try:
        argv = [sys.executable, str(HERE / "run_sandbox.py"), str(topo.state_dir), SUBNET, topo.bridge]
        argv += [str(root), str(bundle), owner, mode, "--resolver", DNS, *extra]
        return sh(*topo.in_node(*argv))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_container_sees_only_its_own_interface_and_the_policy(topo: Topology, bundle: Path) -> None:
    out = _run(topo, bundle, "proc-restricted", "restricted")
    assert "eth0" in out and "10.250.7." in out, out
    assert PUBLIC in out.splitlines(), out
    assert f"{PRIVATE} blocked" in out, out
    assert "inet6" not in out, "no IPv6 address, not even link-local"
    allowed = _run(topo, bundle, "proc-allow", "restricted", "--allow", f"{PRIVATE}/32")
    assert PUBLIC in allowed.splitlines() and f"{PRIVATE} blocked" not in allowed, allowed
    assert topo.net("leases") == [] and topo.sandbox_netns() == [], "all freed after delete"


def test_container_gets_ipv6_with_a_prefix(topo: Topology, bundle: Path) -> None:
    out = _run(topo, bundle, "proc-dual", "restricted", "--subnet6", PREFIX6)
    assert "inet6 fd76:7362:afa:700::2/64" in out and "inet6 fe80::76:73ff:fefa:702/64" in out, out
    assert PUBLIC6 in out.splitlines(), out
    assert f"{ULA} blocked" in out, out
    assert topo.net("leases") == [] and topo.sandbox_netns() == [], "all freed after delete"
