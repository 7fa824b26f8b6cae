"""Layer 2 anti-spoofing: one sandbox cannot pose as another on the node's bridge.

Two sandboxes on the process backend's plumbing; the attacker sends, from its own namespace,
a gratuitous ARP reply and an overriding neighbour advertisement claiming the victim's
addresses, and a frame with the victim's MAC. The node's neighbour entries and the bridge's
forwarding entry for the victim must stay the victim's, and the victim must keep getting its
replies. Each test then removes the bridge table and repeats the attack to see it succeed,
so a test that passes means the table stopped it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.network.conftest import BRIDGE_NF_PARAMS, GATEWAY, HERE, PUBLIC, PUBLIC6, Topology, sh
from tests.network.test_policy import reached
from vmsandbox.node_agent.network.ipam import link_local_of, mac_of
from vmsandbox.node_agent.network.links import veth_name
from vmsandbox.node_agent.network.node import owner_key

#: With bridged frames passing the IP hooks (a kube-proxy node) and without.
pytestmark = BRIDGE_NF_PARAMS

L2_TABLE = "vmsandbox_l2"
#: The bridge's link-local address, where the attacker sends its advertisement.
GATEWAY_LINK_LOCAL = link_local_of(mac_of(GATEWAY))


@pytest.fixture
def pair(topo: Topology) -> tuple[dict[str, Any], dict[str, Any]]:
    topo.net("reconcile")
    return topo.attach("victim"), topo.attach("attacker")


def spoof(netns: str, *args: str) -> None:
    sh("nsenter", f"--net={netns}", sys.executable, str(HERE / "spoof.py"), *args)


def neighbour(topo: Topology, address: str) -> str | None:
    """The node's MAC for ``address`` on the bridge; None without an entry."""
    entries = json.loads(sh("ip", "-n", topo.node, "-j", "neigh", "show", address, "dev", topo.bridge))
    return next((str(e["lladdr"]) for e in entries if "lladdr" in e), None)


def fdb_port(topo: Topology, mac: str) -> str | None:
    """The bridge port the bridge forwards frames for ``mac`` to (learnt entries only)."""
    entries = json.loads(sh("bridge", "-n", topo.node, "-j", "fdb", "show", "br", topo.bridge))
    return next(
        (str(e["ifname"]) for e in entries if e.get("mac") == mac and "permanent" not in e.get("state", "")),
        None,
    )


def l2_table(topo: Topology) -> str:
    return sh("ip", "netns", "exec", topo.node, "nft", "list", "ruleset", "bridge")


def drop_l2_table(topo: Topology) -> None:
    sh("ip", "netns", "exec", topo.node, "nft", "delete", "table", "bridge", L2_TABLE)


def dropped(topo: Topology, owner: str) -> int:
    return int(topo.net("counters")[owner]["dropped_packets"])


def eventually(check: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_a_gratuitous_arp_for_another_sandbox_is_dropped(
    topo: Topology, pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    victim, attacker = pair
    assert reached(topo.probe(victim["netns"], f"http:{PUBLIC}")) == {f"http:{PUBLIC}"}
    assert neighbour(topo, victim["ip"]) == victim["mac"]
    before = dropped(topo, "attacker")
    for _ in range(3):
        spoof(attacker["netns"], "arp", attacker["mac"], victim["ip"])
    time.sleep(0.3)
    assert neighbour(topo, victim["ip"]) == victim["mac"]
    assert dropped(topo, "attacker") >= before + 3
    assert reached(topo.probe(victim["netns"], f"http:{PUBLIC}")) == {f"http:{PUBLIC}"}
    drop_l2_table(topo)
    spoof(attacker["netns"], "arp", attacker["mac"], victim["ip"])
    assert eventually(lambda: neighbour(topo, victim["ip"]) == attacker["mac"]), "the attack works unguarded"


def test_a_neighbour_advertisement_for_another_sandbox_is_dropped(
    topo: Topology, pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    victim, attacker = pair
    assert victim["ip6"], "the node has IPv6"
    assert reached(topo.probe(victim["netns"], f"http:{PUBLIC6}")) == {f"http:{PUBLIC6}"}
    assert neighbour(topo, victim["ip6"]) == victim["mac"]
    before = dropped(topo, "attacker")
    for _ in range(3):
        spoof(attacker["netns"], "na", GATEWAY_LINK_LOCAL, victim["ip6"], attacker["mac"])
    time.sleep(0.3)
    assert neighbour(topo, victim["ip6"]) == victim["mac"]
    assert dropped(topo, "attacker") >= before + 3
    assert reached(topo.probe(victim["netns"], f"http:{PUBLIC6}")) == {f"http:{PUBLIC6}"}
    # Its own addresses it may advertise: the node still finds the attacker.
    assert reached(topo.probe(attacker["netns"], f"http:{PUBLIC6}")) == {f"http:{PUBLIC6}"}
    drop_l2_table(topo)
    spoof(attacker["netns"], "na", GATEWAY_LINK_LOCAL, victim["ip6"], attacker["mac"])
    assert eventually(lambda: neighbour(topo, victim["ip6"]) == attacker["mac"]), "the attack works unguarded"


def test_a_forged_source_mac_is_dropped(topo: Topology, pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    victim, attacker = pair
    victim_port, attacker_port = veth_name(owner_key("victim")), veth_name(owner_key("attacker"))
    assert reached(topo.probe(victim["netns"], f"http:{PUBLIC}")) == {f"http:{PUBLIC}"}
    assert fdb_port(topo, victim["mac"]) == victim_port
    before = dropped(topo, "attacker")
    for _ in range(3):
        spoof(attacker["netns"], "frame", victim["mac"])
    time.sleep(0.3)
    assert fdb_port(topo, victim["mac"]) == victim_port
    assert dropped(topo, "attacker") >= before + 3
    assert reached(topo.probe(victim["netns"], f"http:{PUBLIC}")) == {f"http:{PUBLIC}"}
    drop_l2_table(topo)

    def moved() -> bool:  # again and again: the victim's own frames take its entry back
        spoof(attacker["netns"], "frame", victim["mac"])
        return fdb_port(topo, victim["mac"]) == attacker_port

    assert eventually(moved), "the attack works unguarded"


def test_port_rules_follow_attach_detach_reconcile_and_shutdown(
    topo: Topology, pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    victim_chain, attacker_chain = (f"s{owner_key(o)}_port" for o in ("victim", "attacker"))
    attacker_port = veth_name(owner_key("attacker"))
    table = l2_table(topo)
    assert victim_chain in table and attacker_chain in table and attacker_port in table
    topo.net("detach", "attacker")
    table = l2_table(topo)
    assert victim_chain in table and attacker_chain not in table and attacker_port not in table
    drop_l2_table(topo)  # as if the node lost it: the agent's restart puts it back
    topo.net("reconcile", "victim")
    table = l2_table(topo)
    assert victim_chain in table and veth_name(owner_key("victim")) in table and attacker_chain not in table
    topo.net("shutdown")
    assert topo.node_ruleset().strip() == ""
