"""A gratuitous ARP for the gateway on the sandbox bridge.

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


def frame(ip: str, mac: str) -> bytes:
    """An ARP request for ``ip`` from ``ip`` itself (RFC 5227's announcement), broadcast."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = ipaddress.IPv4Address(ip).packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, ARPOP_REQUEST) + hw + addr + b"\0" * 6 + addr
    return BROADCAST + hw + struct.pack("!H", ETH_P_ARP) + arp


def send(bridge: str, ip: str, mac: str) -> None:
    """Send the announcement on ``bridge`` in this process's network namespace."""
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
            sock.bind((bridge, ETH_P_ARP))
            sock.send(frame(ip, mac))
    except OSError as exc:
        raise NetworkError(f"announcing {ip} on {bridge}: {exc}", step="network") from exc


def announce(host: Host, bridge: str, ip: str, mac: str) -> None:
    """:func:`send`, in the namespace ``host`` is."""
    if host.netns is None:
        send(bridge, ip, mac)
    else:
        host.run([sys.executable, "-m", __name__, bridge, ip, mac])


if __name__ == "__main__":
    send(*sys.argv[1:4])
