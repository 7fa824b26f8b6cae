"""A node and a world of their own for every test: two network namespaces joined by a veth.

The "node" namespace is where the agent's plumbing runs (bridge, nftables, NAT); the "world"
namespace holds the servers: HTTP on a public-looking address (198.18.0.2, 198.18.0.3), on a
private one (10.99.0.2), on the metadata address (169.254.169.254), on global-looking IPv6
addresses (64:ff9b::c612:2, 64:ff9b::c612:3) and on an IPv6 ULA (fd00::2), plus a DNS server on
10.99.0.53. The node routes everything to the world and the
world routes nothing anywhere: no packet leaves these namespaces, and nothing is configured
in the machine's own namespace. The plumbing runs under ``nsenter --net`` only, so the
namespaces it creates for sandboxes are visible to the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.tools import missing

HERE = Path(__file__).parent
SUBNET = "10.250.7.0/24"
GATEWAY = "10.250.7.1"
NODE_UPLINK = "203.0.113.1"
WORLD_UPLINK = "203.0.113.2"
PUBLIC = "198.18.0.2"
PUBLIC_2 = "198.18.0.3"
PRIVATE = "10.99.0.2"
METADATA = "169.254.169.254"
ULA = "fd00::2"
PUBLIC6 = "64:ff9b::c612:2"
PUBLIC6_2 = "64:ff9b::c612:3"
NODE_UPLINK6 = "fd00:1::1"
DNS = "10.99.0.53"
WORLD_ADDRESSES = (PUBLIC, PUBLIC_2, PRIVATE, METADATA, DNS)
WORLD_ADDRESSES6 = (ULA, PUBLIC6, PUBLIC6_2)
#: The IPv6 prefix the plumbing derives from SUBNET (fd76:7362:<10.250.7.0>::/64), and its gateway.
PREFIX6 = "fd76:7362:afa:700::/64"
GATEWAY6 = "fd76:7362:afa:700::1"


def reach_probe(address: str, wait: int = 2) -> str:
    """A shell line for inside a sandbox: ``reached ADDRESS`` if an HTTP GET to it on port 80
    came back from that server (its reply names it), else ``blocked ADDRESS``."""
    fetch = (
        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w {wait} {address} 80 | busybox grep -q {address}"
    )
    return f"if {fetch}; then echo reached {address}; else echo blocked {address}; fi"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (hack/setup.sh installs it)"
    return None


def require_network_tools() -> None:
    reason = _missing()
    if reason is not None:
        missing(reason)


def sh(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def _world_servers(world: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            world,
            sys.executable,
            str(HERE / "world.py"),
            DNS,
            *WORLD_ADDRESSES,
            *WORLD_ADDRESSES6,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@contextlib.contextmanager
def own_tap(address: str) -> Iterator[tuple[str, str]]:
    """A namespace of the test's own holding one tap, up, with ``address`` (``IP/PREFIX``) on
    it: the host side of a VM's NIC. Yields (namespace, tap); both go afterwards."""
    require_network_tools()
    name, tap = f"vnh-{secrets.token_hex(3)}", f"tnh{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "tuntap", "add", "dev", tap, "mode", "tap")
        sh("ip", "-n", name, "addr", "add", address, "dev", tap)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "link", "set", tap, "up")
        yield name, tap
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def tap_is_free(netns: str, tap: str) -> bool:
    """Whether ``tap`` can be attached: a single-queue tap takes one descriptor at a time, so
    this is False while a VMM holds it."""
    script = (
        "import fcntl, os, sys, struct\n"
        "fd = os.open('/dev/net/tun', os.O_RDWR)\n"
        f"req = struct.pack('16sH', {tap.encode()!r}, 0x0002 | 0x1000 | 0x4000)\n"
        "try:\n    fcntl.ioctl(fd, 0x400454CA, req)\nexcept OSError:\n    sys.exit(1)\n"
    )
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", script]
    return subprocess.run(argv, check=False).returncode == 0


@dataclass
class Topology:
    node: str
    world: str
    bridge: str
    state_dir: Path
    #: bridge-nf-call-* in the node namespace; None: as the namespace inherited it.
    bridge_nf: int | None = None
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def node_ns(self) -> str:
        return f"/run/netns/{self.node}"

    def in_node(self, *argv: str) -> list[str]:
        """A command line that runs ``argv`` in the node namespace (network only)."""
        return ["nsenter", f"--net={self.node_ns}", *argv]

    def net_argv(self, *args: str) -> list[str]:
        return self.in_node(
            sys.executable,
            "-m",
            "vmsandbox.node_agent.network",
            "--state-dir",
            str(self.state_dir),
            "--subnet",
            SUBNET,
            "--bridge",
            self.bridge,
            "--resolver",
            DNS,
            *args,
        )

    def agent_env(self) -> dict[str, str]:
        """The agent's settings for the same plumbing as ``net_argv``, in the node namespace."""
        return {
            "VMSANDBOX_AGENT_SANDBOX_CIDR": SUBNET,
            "VMSANDBOX_AGENT_SANDBOX_BRIDGE": self.bridge,
            "VMSANDBOX_AGENT_SANDBOX_DNS": DNS,
            "VMSANDBOX_AGENT_NETWORK_NAMESPACE": self.node_ns,
        }

    def net(self, *args: str) -> Any:
        """Run the node's network plumbing in a fresh process (as a restarted agent would)."""
        return json.loads(sh(*self.net_argv(*args)))

    def attach(self, owner: str, *extra: str) -> dict[str, Any]:
        attachment: dict[str, Any] = self.net("attach", owner, *extra)
        return attachment

    def probe(self, netns: str, *targets: str) -> dict[str, str]:
        """What a process in the sandbox namespace ``netns`` (a path) reaches."""
        out = sh("nsenter", f"--net={netns}", sys.executable, str(HERE / "probe.py"), *targets)
        result: dict[str, str] = json.loads(out)
        return result

    def sandbox_netns(self) -> list[str]:
        return sorted(p.name for p in Path("/run/netns").iterdir() if p.name.startswith(f"{self.bridge}-"))

    def node_links(self) -> list[str]:
        links = json.loads(sh("ip", "-n", self.node, "-j", "link", "show"))
        return sorted(link["ifname"] for link in links)

    def node_ruleset(self) -> str:
        return sh("ip", "netns", "exec", self.node, "nft", "list", "ruleset")


BRIDGE_NF = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


def set_bridge_nf(node: str, value: int) -> None:
    """Whether bridged frames in ``node`` pass the IP hooks (br_netfilter; per namespace since 5.3).

    A node running kube-proxy has 1, a plain host 0 or no such setting: the plumbing must work
    with either, and the tests set it in their own node namespace, never in the machine's.
    """
    have = sh("ip", "netns", "exec", node, "sh", "-c", "ls /proc/sys/net/bridge 2>/dev/null || true").split()
    if not all(name in have for name in BRIDGE_NF):
        if value:  # without the module bridged frames never pass the IP hooks: that is the 0 case
            pytest.skip("br_netfilter is not loaded on this machine (the tests never load modules)")
        return
    sh("ip", "netns", "exec", node, "sysctl", "-q", *(f"net.bridge.{name}={value}" for name in BRIDGE_NF))


def _setup(topo: Topology) -> None:
    node, world = topo.node, topo.world
    sh("ip", "netns", "add", node)
    sh("ip", "netns", "add", world)
    if topo.bridge_nf is not None:
        set_bridge_nf(node, topo.bridge_nf)
    sh("ip", "-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "wd0", "netns", world)
    sh(
        "ip",
        "-n",
        node,
        "-batch",
        "-",
        stdin="\n".join(
            [
                "link set lo up",
                "link set up0 up",
                f"address add {NODE_UPLINK}/24 dev up0",
                f"address add {NODE_UPLINK6}/64 dev up0 nodad",
                f"route add default via {WORLD_UPLINK}",
                "route add default via fd00:1::2",
            ]
        )
        + "\n",
    )
    lines = ["link set lo up", "link set wd0 up", f"address add {WORLD_UPLINK}/24 dev wd0"]
    lines += ["address add fd00:1::2/64 dev wd0 nodad"]
    lines += [f"address add {a}/128 dev lo" for a in WORLD_ADDRESSES6]
    lines += [f"address add {a}/32 dev lo" for a in WORLD_ADDRESSES]
    sh("ip", "-n", world, "-batch", "-", stdin="\n".join(lines) + "\n")
    topo.procs.append(_world_servers(world))


def teardown_topology(topo: Topology) -> None:
    for proc in topo.procs:
        if proc.stdin:
            proc.stdin.close()
        proc.kill()
        proc.wait()
    for ns in topo.sandbox_netns():
        subprocess.run(["ip", "netns", "del", ns], check=False)
    for ns in (topo.node, topo.world):
        subprocess.run(["ip", "netns", "del", ns], check=False)


#: Parametrize ``topo`` (indirectly) with this to run a test with br_netfilter off and on.
BRIDGE_NF_PARAMS = pytest.mark.parametrize(
    "topo", [0, 1], indirect=True, ids=["bridge-nf-off", "bridge-nf-on"]
)


@pytest.fixture
def topo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    """The node and world; ``request.param``, when parametrized, is the node's bridge-nf-call-*."""
    require_network_tools()
    suffix = secrets.token_hex(3)
    topology = Topology(
        node=f"vtn-{suffix}",
        world=f"vtw-{suffix}",
        bridge=f"vb{suffix}",
        state_dir=tmp_path / "net",
        bridge_nf=getattr(request, "param", None),
    )
    try:
        _setup(topology)
        yield topology
    finally:
        teardown_topology(topology)
