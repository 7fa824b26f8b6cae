"""IPv6 for sandboxes: an address on the node's ULA prefix, NAT66 to the world, and the same policy.

As in test_policy, the process backend's plumbing (a veth into a namespace of the sandbox's own)
with the real table deciding every verdict; the prefix is the one the plumbing derives from the
subnet, as an agent without ``sandboxCIDR6`` does.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from tests.network.conftest import (
    BRIDGE_NF_PARAMS,
    GATEWAY,
    GATEWAY6,
    HERE,
    NODE_UPLINK6,
    PREFIX6,
    PUBLIC,
    PUBLIC6,
    PUBLIC6_2,
    ULA,
    Topology,
    sh,
)
from tests.network.test_policy import reached
from vmsandbox.node_agent.network.ipam import link_local_of, mac_of

#: The bridge's link-local address: the EUI-64 one of the gateway's MAC.
LINK_LOCAL = link_local_of(mac_of(GATEWAY))
NODE6 = (NODE_UPLINK6, GATEWAY6)
ALL6 = [f"http:{a}" for a in (PUBLIC6, PUBLIC6_2, ULA, *NODE6)]


def _in_ns(netns: str, *argv: str) -> str:
    return sh("nsenter", f"--net={netns}", *argv)


def _serve(topo: Topology, netns: str, *addresses: str) -> None:
    """HTTP servers (world.py) on ``addresses`` inside ``netns`` (a path), until the test ends."""
    proc = subprocess.Popen(
        ["nsenter", f"--net={netns}", sys.executable, str(HERE / "world.py"), "127.0.0.53", *addresses],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    topo.procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


@pytest.fixture
def node_server6(topo: Topology) -> str:
    """HTTP servers on the node's own IPv6 addresses, the bridge's link-local one too; the
    link-local target as a sandbox names it."""
    topo.net("reconcile")
    _serve(topo, topo.node_ns, *NODE6, f"{LINK_LOCAL}%{topo.bridge}")
    return f"tcp:{LINK_LOCAL}%eth0"


def _addresses6(netns: str) -> list[str]:
    links = json.loads(_in_ns(netns, "ip", "-6", "-j", "address", "show"))
    return [a["local"] for link in links for a in link.get("addr_info", [])]


@BRIDGE_NF_PARAMS
def test_restricted_reaches_public_ipv6_only(topo: Topology, node_server6: str) -> None:
    sandbox = topo.attach("sb6-restricted")
    assert (
        ipaddress.IPv6Address(sandbox["ip6"]) in ipaddress.IPv6Network(PREFIX6)
        and sandbox["gateway6"] == GATEWAY6
    )
    link_local = link_local_of(sandbox["mac"])
    assert _addresses6(sandbox["netns"]) == ["::1", sandbox["ip6"], link_local], "and nothing autoconfigured"
    results = topo.probe(sandbox["netns"], *ALL6, node_server6, f"http:{PUBLIC}")
    assert reached(results) == {f"http:{PUBLIC6}", f"http:{PUBLIC6_2}", f"http:{PUBLIC}"}, results
    assert results[node_server6].startswith("error"), results
    counters = topo.net("counters")["sb6-restricted"]
    assert counters["dropped_packets"] >= 3, counters


def test_the_world_sees_the_node_not_the_sandbox(topo: Topology) -> None:
    """Egress is masqueraded (NAT66): the world never learns the sandbox's ULA address."""
    topo.net("reconcile")
    sandbox = topo.attach("sb6-nat")
    assert topo.probe(sandbox["netns"], f"peer:{PUBLIC6}") == {f"peer:{PUBLIC6}": NODE_UPLINK6}


@pytest.mark.usefixtures("node_server6")
def test_allow_opens_exactly_the_ula_address(topo: Topology) -> None:
    sandbox = topo.attach("sb6-allow", "--allow", f"{ULA}/128")
    results = topo.probe(sandbox["netns"], *ALL6)
    assert reached(results) == {f"http:{PUBLIC6}", f"http:{PUBLIC6_2}", f"http:{ULA}"}, results


def test_none_has_no_ipv6_route(topo: Topology) -> None:
    topo.net("reconcile")
    sandbox = topo.attach("sb6-none", "--mode", "none")
    assert sandbox["ip6"] is None
    routes = _in_ns(sandbox["netns"], "ip", "-6", "route", "show")
    assert "default" not in routes and "eth0" not in routes, routes
    assert _addresses6(sandbox["netns"]) == ["::1"]
    results = topo.probe(sandbox["netns"], f"http:{PUBLIC6}", f"http:{ULA}")
    assert all("unreachable" in answer for answer in results.values()), results


@pytest.mark.usefixtures("node_server6")
def test_open_reaches_the_world_over_ipv6_but_never_the_node(topo: Topology, node_server6: str) -> None:
    sandbox = topo.attach("sb6-open", "--mode", "open")
    results = topo.probe(sandbox["netns"], *ALL6, node_server6)
    assert reached(results) == {f"http:{PUBLIC6}", f"http:{PUBLIC6_2}", f"http:{ULA}"}, results


def test_sandboxes_cannot_reach_each_other_over_ipv6(topo: Topology) -> None:
    topo.net("reconcile")
    first = topo.attach("sb6-one", "--mode", "open", "--allow", PREFIX6)
    second = topo.attach("sb6-two", "--mode", "open", "--allow", PREFIX6)
    _serve(topo, second["netns"], second["ip6"])
    assert reached(topo.probe(second["netns"], f"http:{second['ip6']}")) == {f"http:{second['ip6']}"}
    assert reached(topo.probe(first["netns"], f"http:{second['ip6']}")) == set()
    assert reached(topo.probe(first["netns"], f"http:{PUBLIC6}")) == {f"http:{PUBLIC6}"}


def test_a_spoofed_ipv6_source_is_dropped(topo: Topology) -> None:
    """Only the leased address leaves the bridge: another address of the prefix, set inside the
    sandbox, gets nowhere."""
    topo.net("reconcile")
    sandbox = topo.attach("sb6-spoof")
    spoofed = str(ipaddress.IPv6Address(sandbox["ip6"]) + 100)
    sh(
        "ip",
        "-n",
        sandbox["netns"].rsplit("/", 1)[1],
        "address",
        "add",
        f"{spoofed}/128",
        "dev",
        "eth0",
        "nodad",
    )
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET6); s.settimeout(2); s.bind((sys.argv[2],0))\n"
        "try: s.connect((sys.argv[1],80)); print('connected')\nexcept OSError as e: print('error', e)"
    )
    out = _in_ns(sandbox["netns"], sys.executable, "-c", code, PUBLIC6, spoofed)
    assert out.startswith("error"), out


def test_a_changed_prefix_moves_the_leases_and_none_turns_ipv6_off(topo: Topology) -> None:
    """The agent restarted with another ``sandboxCIDR6`` (or ``none``): the leases it keeps are
    rewritten to the new prefix (same offset), and the table follows."""
    topo.net("reconcile")
    kept = topo.attach("sb6-kept")
    other = "fd12:3456::/64"
    sh(*topo.net_argv("--subnet6", other, "reconcile", "sb6-kept"))
    lease = topo.net("--subnet6", other, "leases")[0]
    assert lease["ip"] == kept["ip"] and lease["ip6"] == "fd12:3456::2", lease
    assert "fd12:3456::2 : jump s" in topo.node_ruleset()
    sh(*topo.net_argv("--subnet6", "none", "reconcile", "sb6-kept"))
    assert topo.net("--subnet6", "none", "leases")[0]["ip6"] == ""
    ruleset = topo.node_ruleset()
    assert "ip6" not in ruleset and "@in6" not in ruleset, "no IPv6 in the table: the bridge drops it all"


@BRIDGE_NF_PARAMS
def test_reconcile_answers_an_ipv6_gateway_lookup_left_pending_by_the_outage(topo: Topology) -> None:
    """The sandbox solicited the IPv6 gateway while the bridge was gone, and its next try is far
    off: the re-created bridge's unsolicited advertisement must answer it (as the gratuitous ARP
    does for IPv4), or its connections hang or fail with "No route to host"."""
    topo.net("reconcile")
    kept = topo.attach("sb6-kept")
    sandbox = kept["netns"].rsplit("/", 1)[1]
    sh("ip", "netns", "exec", sandbox, "sysctl", "-q", "net.ipv6.neigh.eth0.retrans_time_ms=60000")
    sh("ip", "netns", "exec", sandbox, "sysctl", "-q", "net.ipv6.neigh.eth0.mcast_solicit=1")
    sh("ip", "-n", topo.node, "link", "del", topo.bridge)  # the agent is killed meanwhile
    assert topo.probe(kept["netns"], f"http:{PUBLIC6}")[f"http:{PUBLIC6}"] != PUBLIC6
    assert "INCOMPLETE" in sh("ip", "-n", sandbox, "neigh", "show", GATEWAY6), "the lookup is still pending"
    topo.net("reconcile", "sb6-kept")
    assert topo.probe(kept["netns"], f"http:{PUBLIC6}") == {f"http:{PUBLIC6}": PUBLIC6}
