"""Run inside a sandbox's namespace: send one forged frame or packet out of ``eth0``.

``arp MAC IP``: a gratuitous ARP reply from MAC claiming IP (sender and target both IP, target
hardware address MAC, as the kernel requires of a gratuitous reply);
``na DEST TARGET MAC``: an unsolicited, overriding neighbour advertisement to DEST (a
link-local address) for TARGET with MAC as its link-layer address, hop limit 255;
``frame MAC``: a broadcast frame whose source MAC is MAC (ether type 0x88b5, for local
experiments: no layer 3 code on the node looks into it).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

IFACE = "eth0"
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_LOCAL = 0x88B5


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _send_frame(frame: bytes) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((IFACE, 0))
        sock.send(frame)


def arp(mac: str, ip: str) -> None:
    hw, addr = _mac(mac), ipaddress.IPv4Address(ip).packed
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 2) + hw + addr + hw + addr
    _send_frame(b"\xff" * 6 + hw + struct.pack("!H", ETH_P_ARP) + body)


def na(dest: str, target: str, mac: str) -> None:
    # Type 136, code 0, checksum (the kernel fills it in), flags: override; the target; the
    # target link-layer address option (type 2, 8 bytes).
    message = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + ipaddress.IPv6Address(target).packed
    message += b"\x02\x01" + _mac(mac)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.sendto(message, (dest, 0, 0, socket.if_nametoindex(IFACE)))


def frame(mac: str) -> None:
    _send_frame(b"\xff" * 6 + _mac(mac) + struct.pack("!H", ETH_P_LOCAL) + b"\0" * 46)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"arp": arp, "na": na, "frame": frame}[command](*args)
