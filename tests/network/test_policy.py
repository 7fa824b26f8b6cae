"""The egress policy as a sandbox sees it: probes from inside a sandbox's own namespace.

These run the process backend's plumbing (a veth into a namespace of the sandbox's own), so
every verdict here is the real nftables table in the node namespace deciding.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.network.conftest import (
    BRIDGE_NF_PARAMS,
    DNS,
    GATEWAY,
    HERE,
    METADATA,
    NODE_UPLINK,
    PRIVATE,
    PUBLIC,
    PUBLIC6,
    PUBLIC6_2,
    PUBLIC_2,
    ULA,
    Topology,
)

#: Every verdict with bridged frames passing the IP hooks (a kube-proxy node) and without.
pytestmark = BRIDGE_NF_PARAMS

#: IPv4 only: test_ipv6 covers the IPv6 verdicts.
ALL = [f"http:{a}" for a in (PUBLIC, PUBLIC_2, PRIVATE, METADATA, DNS, NODE_UPLINK, GATEWAY)]


def reached(results: dict[str, str]) -> set[str]:
    """The targets that answered with their own address (or, for DNS, any address)."""
    out = set()
    for target, answer in results.items():
        if target.startswith("http:") and answer == target.removeprefix("http:"):
            out.add(target)
    return out


@pytest.fixture
def node_server(topo: Topology) -> None:
    """An HTTP server on every address of the node itself (its uplink and the gateway)."""
    topo.net("reconcile")
    proc = subprocess.Popen(
        topo.in_node(sys.executable, str(HERE / "world.py"), "127.0.0.53", "0.0.0.0"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    topo.procs.append(proc)


@pytest.mark.usefixtures("node_server")
def test_restricted_reaches_the_internet_and_dns_only(topo: Topology) -> None:
    sandbox = topo.attach("sb-restricted")
    results = topo.probe(sandbox["netns"], *ALL, f"http:{ULA}", f"dns:public.test@{DNS}")
    assert reached(results) == {f"http:{PUBLIC}", f"http:{PUBLIC_2}"}, results
    assert results[f"dns:public.test@{DNS}"] == PUBLIC, "DNS to the configured resolver is allowed"
    assert results[f"http:{ULA}"].startswith("error"), "a ULA is blocked like a private IPv4 address"
    counters = topo.net("counters")["sb-restricted"]
    assert counters["dropped_packets"] >= 5, counters
    assert counters["tx_bytes"] > 0 and counters["rx_bytes"] > 0


@pytest.mark.usefixtures("node_server")
def test_allow_opens_exactly_what_it_names(topo: Topology) -> None:
    sandbox = topo.attach("sb-allow", "--allow", f"{PRIVATE}/32")
    results = topo.probe(sandbox["netns"], *ALL)
    assert reached(results) == {f"http:{PUBLIC}", f"http:{PUBLIC_2}", f"http:{PRIVATE}"}, results


@pytest.mark.parametrize(
    ("kept", "denied"), [(PUBLIC, f"{PUBLIC_2}/32"), (PUBLIC6, f"{PUBLIC6_2}/128")], ids=["ipv4", "ipv6"]
)
def test_deny_closes_a_public_address(topo: Topology, kept: str, denied: str) -> None:
    topo.net("reconcile")
    sandbox = topo.attach("sb-deny", "--deny", denied)
    results = topo.probe(sandbox["netns"], f"http:{kept}", f"http:{denied.split('/')[0]}")
    assert reached(results) == {f"http:{kept}"}, results


def test_none_has_loopback_only(topo: Topology) -> None:
    topo.net("reconcile")
    sandbox = topo.attach("sb-none", "--mode", "none")
    assert sandbox["ip"] is None
    results = topo.probe(sandbox["netns"], f"http:{PUBLIC}", f"dns:public.test@{DNS}")
    assert all("unreachable" in answer for answer in results.values()), results
    links = subprocess.run(
        ["ip", "-j", "-n", sandbox["netns"].rsplit("/", 1)[1], "link", "show"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"ifname":"lo"' in links and links.count("ifname") == 1
    assert topo.net("leases") == [], "no address is leased for mode none"


@pytest.mark.usefixtures("node_server")
def test_open_reaches_the_world_but_never_the_node(topo: Topology) -> None:
    sandbox = topo.attach("sb-open", "--mode", "open", "--deny", f"{PUBLIC_2}/32")
    results = topo.probe(sandbox["netns"], *ALL)
    assert reached(results) == {f"http:{PUBLIC}", f"http:{PRIVATE}", f"http:{METADATA}", f"http:{DNS}"}, (
        results
    )


def test_sandboxes_cannot_reach_each_other(topo: Topology) -> None:
    topo.net("reconcile")
    first = topo.attach("sb-one", "--mode", "open")
    second = topo.attach("sb-two", "--mode", "open", "--allow", "10.250.7.0/24")
    server = subprocess.Popen(
        [
            "nsenter",
            f"--net={second['netns']}",
            sys.executable,
            str(HERE / "world.py"),
            "127.0.0.53",
            second["ip"],
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    topo.procs.append(server)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    assert topo.probe(second["netns"], f"http:{second['ip']}") == {f"http:{second['ip']}": second["ip"]}
    blocked = topo.probe(first["netns"], f"http:{second['ip']}")
    assert reached(blocked) == set(), blocked
    assert reached(topo.probe(first["netns"], f"http:{PUBLIC}")) == {f"http:{PUBLIC}"}
