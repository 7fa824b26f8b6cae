"""Leases, links and the table across agent restarts, kills and deletes, in the node namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time

from tests.network.conftest import (
    BRIDGE_NF_PARAMS,
    GATEWAY,
    PREFIX6,
    PRIVATE,
    PUBLIC,
    PUBLIC6,
    SUBNET,
    ULA,
    Topology,
    sh,
)
from vmsandbox.node_agent.network.ipam import mac_of
from vmsandbox.node_agent.network.links import veth_name
from vmsandbox.node_agent.network.node import owner_key

OWNERS = [f"uid-{i:02d}" for i in range(50)]

ATTACH_ALL = """
import ipaddress, sys
from pathlib import Path
from vmsandbox.node_agent.network import NetworkSettings, NodeNetwork
from vmsandbox.node_agent.network.startup import derived_prefix6
subnet = ipaddress.IPv4Network(sys.argv[2])
node = NodeNetwork(NetworkSettings(subnet=subnet, state_dir=Path(sys.argv[1]), bridge=sys.argv[3],
                                   prefix6=derived_prefix6(subnet)))
for owner in sys.argv[4:]:
    node.attach(owner, "restricted", [], [], "netns")
"""


def _leases(topo: Topology) -> dict[str, str]:
    return {lease["owner"]: lease["ip"] for lease in topo.net("leases")}


def _leases6(topo: Topology) -> dict[str, str]:
    return {lease["owner"]: lease["ip6"] for lease in topo.net("leases")}


def _attach_all(topo: Topology) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", ATTACH_ALL, str(topo.state_dir), SUBNET, topo.bridge, *OWNERS]
    return subprocess.Popen(topo.in_node(*argv), start_new_session=True)


def test_fifty_sandboxes_distinct_across_a_kill_and_all_released(topo: Topology) -> None:
    topo.net("reconcile")
    first = _attach_all(topo)
    deadline = time.monotonic() + 120
    while len(list((topo.state_dir / "leases").iterdir())) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the agent dies in the middle of the starts
    first.wait()
    before = _leases(topo)
    before6 = _leases6(topo)
    assert 20 <= len(before) < 50
    topo.net("reconcile", *before)  # the restarted agent keeps what it still owns
    second = _attach_all(topo)
    assert second.wait(timeout=300) == 0
    after = _leases(topo)
    assert sorted(after) == OWNERS
    assert len(set(after.values())) == 50, "no address handed out twice"
    assert all(after[owner] == ip for owner, ip in before.items()), "a restart keeps existing leases"
    assert all(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(SUBNET) for ip in after.values())
    after6 = _leases6(topo)
    assert len(set(after6.values())) == 50, "no IPv6 address handed out twice"
    assert all(after6[owner] == ip6 for owner, ip6 in before6.items()), "nor changed by the restart"
    assert all(ipaddress.IPv6Address(ip6) in ipaddress.IPv6Network(PREFIX6) for ip6 in after6.values())
    assert len(topo.sandbox_netns()) == 50
    for owner in OWNERS:
        topo.net("detach", owner)
    assert _leases(topo) == {}
    assert topo.sandbox_netns() == []
    assert [link for link in topo.node_links() if link.startswith("vsb")] == []
    assert not re.search(r"\bs[0-9a-f]{12}_", topo.node_ruleset()), "no sandbox object left in the table"
    topo.net("shutdown")
    assert topo.node_links() == ["lo", "up0"], "nothing of ours left in the node namespace"
    assert topo.node_ruleset().strip() == ""


def _lose_table_and_bridge(topo: Topology) -> None:
    """What a flush or a restart of the node's networking does while the agent is down."""
    sh("ip", "netns", "exec", topo.node, "nft", "delete", "table", "inet", "vmsandbox")
    sh("ip", "netns", "exec", topo.node, "nft", "delete", "table", "bridge", "vmsandbox_l2")
    sh("ip", "-n", topo.node, "link", "del", topo.bridge)


def _bridge_mac(topo: Topology) -> str:
    return str(json.loads(sh("ip", "-n", topo.node, "-j", "link", "show", "dev", topo.bridge))[0]["address"])


@BRIDGE_NF_PARAMS
def test_reconcile_after_a_kill_restores_and_frees(topo: Topology) -> None:
    topo.net("reconcile")
    kept = topo.attach("kept", "--allow", f"{PRIVATE}/32", "--allow", f"{ULA}/128")
    gone = topo.attach("gone")
    _lose_table_and_bridge(topo)  # the agent is killed meanwhile
    assert topo.probe(kept["netns"], f"http:{PUBLIC}")[f"http:{PUBLIC}"] != PUBLIC
    assert topo.probe(kept["netns"], f"http:{PUBLIC6}")[f"http:{PUBLIC6}"] != PUBLIC6
    topo.net("reconcile", "kept")  # the restarted agent still owns "kept" only
    assert _leases(topo) == {"kept": kept["ip"]}
    assert topo.sandbox_netns() == [kept["netns"].rsplit("/", 1)[1]]
    assert gone["netns"].rsplit("/", 1)[1] not in topo.sandbox_netns()
    targets = (PUBLIC, PRIVATE, PUBLIC6, ULA)
    results = topo.probe(kept["netns"], *(f"http:{t}" for t in targets))
    assert results == {f"http:{t}": t for t in targets}, results
    ruleset = sh("ip", "netns", "exec", topo.node, "nft", "list", "table", "inet", "vmsandbox")
    assert ruleset.count("jump s") == 6, "one sandbox's out, in and node chains in the IPv4 and IPv6 maps"
    ports = sh("ip", "netns", "exec", topo.node, "nft", "list", "map", "bridge", "vmsandbox_l2", "ports")
    assert ports.count("jump s") == 1 and veth_name(owner_key("kept")) in ports, ports
    assert f"{kept['ip6']} : jump s" in ruleset and f"{ULA} }}" in ruleset, ruleset


@BRIDGE_NF_PARAMS
def test_reconcile_answers_a_gateway_lookup_left_pending_by_the_outage(topo: Topology) -> None:
    """A sandbox asked for the gateway's MAC while the bridge was gone, and its own next retry
    is far off (a guest kernel's timing is its own): the re-created bridge's announcement must
    answer it, or its next connection fails ("No route to host") or hangs."""
    topo.net("reconcile")
    kept = topo.attach("kept")
    sandbox = kept["netns"].rsplit("/", 1)[1]
    sh("ip", "netns", "exec", sandbox, "sysctl", "-q", "net.ipv4.neigh.eth0.retrans_time_ms=60000")
    sh("ip", "netns", "exec", sandbox, "sysctl", "-q", "net.ipv4.neigh.eth0.mcast_solicit=1")
    _lose_table_and_bridge(topo)
    assert topo.probe(kept["netns"], f"http:{PUBLIC}")[f"http:{PUBLIC}"] != PUBLIC
    assert "INCOMPLETE" in sh("ip", "-n", sandbox, "neigh", "show", GATEWAY), "the lookup is still pending"
    topo.net("reconcile", "kept")
    assert topo.probe(kept["netns"], f"http:{PUBLIC}") == {f"http:{PUBLIC}": PUBLIC}


def test_the_gateway_mac_survives_ports_leaving_and_the_bridge_returning(topo: Topology) -> None:
    """A bridge left to itself takes its lowest port's MAC: the gateway's would change under
    every sandbox when that sandbox leaves or the bridge is re-created."""
    topo.net("reconcile")
    topo.attach("first")
    topo.attach("second")
    assert _bridge_mac(topo) == mac_of(GATEWAY)
    topo.net("detach", "first")
    assert _bridge_mac(topo) == mac_of(GATEWAY)
    _lose_table_and_bridge(topo)
    topo.net("reconcile", "second")
    assert _bridge_mac(topo) == mac_of(GATEWAY)


def test_a_half_written_lease_is_not_handed_out_and_is_freed(topo: Topology) -> None:
    topo.net("reconcile")
    (topo.state_dir / "leases" / "10.250.7.2").write_text("")  # killed between create and write
    first = topo.attach("after-crash")
    assert first["ip"] == "10.250.7.3"
    topo.net("reconcile", "after-crash")
    assert not (topo.state_dir / "leases" / "10.250.7.2").exists()
    assert topo.attach("next")["ip"] == "10.250.7.2"


def test_an_exhausted_subnet_fails_clearly_and_leaks_nothing(topo: Topology) -> None:
    small = [*topo.net_argv("reconcile")]
    small[small.index(SUBNET)] = "10.250.7.0/29"  # gateway .1, sandboxes .2 to .6
    sh(*small)
    attach = [*topo.net_argv("attach", "x")]
    attach[attach.index(SUBNET)] = "10.250.7.0/29"
    for i in range(5):
        sh(*[a if a != "x" else f"fits-{i}" for a in attach])
    done = subprocess.run([a if a != "x" else "one-too-many" for a in attach], capture_output=True, text=True)
    assert done.returncode == 1
    assert "all 5 addresses of 10.250.7.0/29 are leased" in done.stderr
    assert len(topo.sandbox_netns()) == 5


def test_a_failed_policy_frees_the_lease_and_the_links(topo: Topology) -> None:
    topo.net("reconcile")
    sh("ip", "netns", "exec", topo.node, "nft", "delete", "table", "inet", "vmsandbox")
    sh("ip", "netns", "exec", topo.node, "nft", "delete", "table", "bridge", "vmsandbox_l2")
    done = subprocess.run(topo.net_argv("attach", "doomed"), capture_output=True, text=True)
    assert done.returncode == 1 and "network policy" in done.stderr, done.stderr
    assert topo.net("leases") == [] and topo.sandbox_netns() == []
    assert [link for link in topo.node_links() if link.startswith("vsb")] == []


def test_reconcile_keeps_a_running_vms_tap(topo: Topology) -> None:
    topo.net("reconcile")
    tap = topo.attach("vm", "--kind", "tap")["tap"]

    def ifindex() -> int:
        return int(json.loads(sh("ip", "-n", topo.node, "-j", "link", "show", "dev", tap))[0]["ifindex"])

    before = ifindex()
    topo.net("reconcile", "vm")  # an agent restart while the VM holds the tap
    assert ifindex() == before, "the tap was replaced under the VM"
    topo.net("reconcile")
    assert tap not in topo.node_links()
