"""Run inside a sandbox's namespace: try each target and print what happened, as JSON.

Targets: ``http:ADDRESS`` (GET /, the body names the server), ``peer:ADDRESS`` (GET /peer, the
body is the source address the server saw), ``tcp:ADDRESS[%IF]`` (a connection to port 80,
link-local addresses too: ``connected`` or the error), ``dns:NAME@SERVER`` (one A query).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import urllib.request

#: Generous: a loaded CI machine must not turn a reachable server into a "blocked" one.
TIMEOUT = 2.0


def _http(address: str, path: str = "/") -> str:
    host = f"[{address}]" if ":" in address else address
    with urllib.request.urlopen(f"http://{host}{path}", timeout=TIMEOUT) as reply:
        return str(reply.read().decode())


def _tcp(address: str) -> str:
    with socket.create_connection((address, 80), timeout=TIMEOUT):
        return "connected"


def _dns(name: str, server: str) -> str:
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(query, (server, 53))
        reply = sock.recv(512)
    if struct.unpack("!H", reply[6:8])[0] == 0:
        return "NXDOMAIN"
    return socket.inet_ntoa(reply[-4:])


def probe(target: str) -> str:
    kind, _, arg = target.partition(":")
    try:
        if kind == "http":
            return _http(arg)
        if kind == "peer":
            return _http(arg, "/peer")
        if kind == "tcp":
            return _tcp(arg)
        name, _, server = arg.partition("@")
        return _dns(name, server)
    except OSError as exc:
        return f"error: {exc}"


if __name__ == "__main__":
    print(json.dumps({target: probe(target) for target in sys.argv[1:]}))
