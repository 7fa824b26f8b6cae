"""Per-port anti-spoofing on the sandbox bridge: a ``bridge``-family table of the agent's own.

The ``inet`` table (:mod:`policy`) sees packets the node routes, by IP address; it cannot stop
a sandbox claiming another sandbox's MAC, or its address in an ARP reply or an IPv6 neighbour
advertisement, which poisons the node's neighbour cache and diverts the victim's replies. This
table sees every frame entering the bridge from a sandbox's port (``prerouting``; frames the node
itself sends to the ports never pass it), jumps by the port's name (verdict map ``ports``) to the
sandbox's chain ``s<key>_port``, and that chain lets through only:

- frames whose source MAC is the sandbox's;
- ARP (requests and replies alike) from that MAC for the sandbox's IPv4 address;
- IPv4 from the sandbox's address;
- IPv6 from its address, its link-local address (EUI-64 of its MAC) or the unspecified one, and
  neighbour advertisements among it only for those two addresses (the target, ICMPv6 bytes 8-23).

Everything else (another MAC or address, other ether types, VLAN tags) is dropped and counted in
``s<key>_l2drop``. The commands here are parts of :mod:`policy`'s scripts, so both tables change
in one transaction.
"""

from __future__ import annotations

import ipaddress

from vmsandbox.node_agent.network.ipam import Lease, link_local_of
from vmsandbox.node_agent.network.links import tap_name, veth_name


def name_of(table: str) -> str:
    """The bridge table's name, after the ``inet`` one's."""
    return f"{table}_l2"


def table_of(table: str) -> str:
    """``bridge <table>_l2``, as nft names it."""
    return f"bridge {name_of(table)}"


def port_of(lease: Lease) -> str:
    """The sandbox's port on the bridge: its veth's host end or its tap."""
    return veth_name(lease.key) if lease.kind == "netns" else tap_name(lease.key)


def base(table: str) -> str:
    t = table_of(table)
    return (
        f"table {t}\ndelete table {t}\n"
        f"table {t} {{\n"
        "  map ports { type ifname : verdict; }\n"
        "  chain prerouting {\n"
        "    type filter hook prerouting priority filter; policy accept;\n"
        "    iifname vmap @ports\n"
        "  }\n"
        "}\n"
    )


def _hex(address: str) -> str:
    return f"0x{int(ipaddress.IPv6Address(address)):032x}"


def rules(lease: Lease, v6: bool, k: str) -> list[str]:
    """The port chain's rules; without ``v6`` the sandbox sends no IPv6 at all."""
    drop = f'counter name "{k}_l2drop" drop'
    arp = "arp htype 1 arp ptype ip arp hlen 6 arp plen 4"
    out = [
        f"ether saddr != {lease.mac} {drop}",
        f"{arp} arp saddr ether {lease.mac} arp saddr ip {lease.ip} accept",
        f"ip saddr {lease.ip} accept",
    ]
    if v6:
        own = (lease.ip6, link_local_of(lease.mac))
        out += [
            f"ip6 saddr != {{ {', '.join([*own, '::'])} }} {drop}",
            f"icmpv6 type nd-neighbor-advert @th,64,128 != {{ {', '.join(map(_hex, own))} }} {drop}",
            "ether type ip6 accept",
        ]
    return [*out, drop]


def sandbox(table: str, lease: Lease, v6: bool, k: str) -> list[str]:
    """(Re)create the sandbox's counter, chain and map entry (idempotent)."""
    t, port = table_of(table), port_of(lease)
    lines = [f"add counter {t} {k}_l2drop", f"add chain {t} {k}_port", f"flush chain {t} {k}_port"]
    lines += [f"add rule {t} {k}_port {rule}" for rule in rules(lease, v6, k)]
    return [*lines, f'add element {t} ports {{ "{port}" : jump {k}_port }}']


def without(table: str, lease: Lease, k: str) -> list[str]:
    t = table_of(table)
    return [
        f'delete element {t} ports {{ "{port_of(lease)}" }}',
        f"flush chain {t} {k}_port",
        f"delete chain {t} {k}_port",
        f"delete counter {t} {k}_l2drop",
    ]


def delete(table: str) -> str:
    t = table_of(table)
    return f"table {t}\ndelete table {t}\n"
