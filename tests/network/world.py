"""The test world's servers, run inside the "world" namespace: HTTP on each address, and DNS.

Every HTTP server answers ``GET /`` with its own address, so a probe knows whom it reached, and
``GET /peer`` with the client's address, so a test sees what the node's NAT made of the source.
The DNS server answers A queries from a fixed table (a few lines of RFC 1035, UDP only).
It prints ``ready`` once every socket is bound.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import socketserver
import struct
import sys
import threading

NAMES = {"public.test.": "198.18.0.2", "private.test.": "10.99.0.2"}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        own = str(self.server.server_address[0])  # type: ignore[index]
        body = (str(self.client_address[0]) if self.path == "/peer" else own).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server4(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """HTTP on one address. Not ``http.server.HTTPServer``: its bind looks its own address up in
    DNS (``socket.getfqdn``), which in a namespace with no reachable resolver waits out every
    timeout of the resolver, 30 s for a link-local address."""

    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server4):
    address_family = socket.AF_INET6


def _qname(packet: bytes) -> tuple[str, int]:
    labels, pos = [], 12
    while packet[pos]:
        length = packet[pos]
        labels.append(packet[pos + 1 : pos + 1 + length].decode())
        pos += 1 + length
    return ".".join(labels) + ".", pos + 1


def _answer(query: bytes) -> bytes:
    name, end = _qname(query)
    qtype = struct.unpack("!H", query[end : end + 2])[0]
    question = query[12 : end + 4]
    address = NAMES.get(name.lower()) if qtype == 1 else None
    flags = 0x8180 if address else 0x8183
    header = query[:2] + struct.pack("!HHHHH", flags, 1, 1 if address else 0, 0, 0)
    if address is None:
        return header + question
    record = struct.pack("!HHHLH", 0xC00C, 1, 1, 60, 4) + ipaddress.IPv4Address(address).packed
    return header + question + record


def _dns(address: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))

    def serve() -> None:
        while True:
            query, peer = sock.recvfrom(512)
            sock.sendto(_answer(query), peer)

    threading.Thread(target=serve, daemon=True).start()


def main(dns: str, addresses: list[str]) -> None:
    for address in addresses:
        cls = _Server6 if ":" in address else _Server4
        host, _, scope = address.partition("%")  # fe80::1%eth0: link-local on one interface
        bind = (host, 80, 0, socket.if_nametoindex(scope)) if scope else (address, 80)
        server = cls(bind, _Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    _dns(dns)
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
