"""A gratuitous ARP for the gateway on the sandbox bridge, and an unsolicited neighbour
advertisement for the IPv6 gateway.

A sandbox that asked for the gateway's MAC while the bridge was gone (its ports were on no
bridge, so nobody answered) keeps that request pending until its own retries run out, and then
fails whatever waited on it with "No route to host"; one that cached an older bridge MAC sends
to a MAC nobody has until its entry ages out. After the agent re-creates the bridge it says who
the gateway is once, and every sandbox's kernel (a namespace's or a VM guest's) updates the
entry it already has at once.

``python -m vmsandbox.node_agent.network.announce BRIDGE IP MAC`` sends it from a namespace
entered with ``nsenter`` (the plumbing in a namespace other than the agent's).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

from vmsandbox.node_agent.network.commands import Host
from vmsandbox.node_agent.network.errors import NetworkError

ETH_P_ARP = 0x0806
ARPOP_REQUEST = 1
BROADCAST = b"\xff" * 6
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LLADDR = 2
NA_ROUTER = 0x80
NA_OVERRIDE = 0x20
ALL_NODES = "ff02::1"
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58


def frame(ip: str, mac: str) -> bytes:
    """An ARP request for ``ip`` from ``ip`` itself (RFC 5227's announcement), broadcast."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = ipaddress.IPv4Address(ip).packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, ARPOP_REQUEST) + hw + addr + b"\0" * 6 + addr
    return BROADCAST + hw + struct.pack("!H", ETH_P_ARP) + arp


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame6(ip6: str, mac: str) -> bytes:
    """A neighbour advertisement for ``ip6`` from a router, overriding, with its MAC as the target
    link-layer address option, from ``ip6`` to all nodes with hop limit 255: a whole frame."""
    hw = bytes.fromhex(mac.replace(":", ""))
    src, dst = ipaddress.IPv6Address(ip6).packed, ipaddress.IPv6Address(ALL_NODES).packed
    body = struct.pack("!I", (NA_ROUTER | NA_OVERRIDE) << 24) + src
    body += struct.pack("!BB", ND_OPT_TARGET_LLADDR, 1) + hw
    pseudo = src + dst + struct.pack("!IxxxB", 4 + len(body), IPPROTO_ICMPV6)
    checksum = _checksum(pseudo + struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, 0) + body)
    icmp = struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, checksum) + body
    ip = struct.pack("!IHBB", 6 << 28, len(icmp), IPPROTO_ICMPV6, 255) + src + dst
    return ALL_NODES_MAC + hw + struct.pack("!H", ETH_P_IPV6) + ip + icmp


def _send_frame(bridge: str, ethertype: int, data: bytes, what: str) -> None:
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype)) as sock:
            sock.bind((bridge, ethertype))
            sock.send(data)
    except OSError as exc:
        raise NetworkError(f"announcing {what} on {bridge}: {exc}", step="network") from exc


def send(bridge: str, ip: str, mac: str, ip6: str | None = None) -> None:
    """Send the announcements on ``bridge`` in this process's network namespace."""
    _send_frame(bridge, ETH_P_ARP, frame(ip, mac), ip)
    if ip6:
        _send_frame(bridge, ETH_P_IPV6, frame6(ip6, mac), ip6)


def announce(host: Host, bridge: str, ip: str, mac: str, ip6: str | None = None) -> None:
    """:func:`send`, in the namespace ``host`` is."""
    if host.netns is None:
        send(bridge, ip, mac, ip6)
    else:
        host.run([sys.executable, "-m", __name__, bridge, ip, mac, *([ip6] if ip6 else [])])


if __name__ == "__main__":
    send(*sys.argv[1:5])
