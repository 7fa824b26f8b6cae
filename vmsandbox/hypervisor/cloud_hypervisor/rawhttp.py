"""One HTTP/1.1 request on the VMM's API socket with file descriptors attached (SCM_RIGHTS).

Cloud Hypervisor takes the descriptors a request needs (a hot-plugged NIC's taps) as ancillary
data on the same write as the request; they travel with its first byte. The answer is read as
micro_http writes it: a status line, headers, and a body of ``Content-Length`` bytes (none for
a 204, which carries no length).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from vmsandbox.hypervisor.cloud_hypervisor.errors import ApiProtocolError, ApiUnreachable

MAX_HEAD = 8192


def put_with_fds(
    api_socket: Path, path: str, body: dict[str, Any], fds: list[int], timeout: float
) -> tuple[int, bytes]:
    """``PUT path`` with the JSON ``body`` and ``fds``; the status and the body of the answer."""
    endpoint = path.rsplit("/", 1)[-1]
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(api_socket))
            request = head + data
            sent = socket.send_fds(sock, [request], fds)
            sock.sendall(request[sent:])
            return _read_answer(sock, endpoint)
        except OSError as exc:
            raise ApiUnreachable("PUT", endpoint, str(exc) or type(exc).__name__) from exc


def _read_answer(sock: socket.socket, endpoint: str) -> tuple[int, bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise ApiProtocolError(endpoint, "the answer's head is too long")
        chunk = sock.recv(65536)
        if not chunk:
            raise ApiProtocolError(endpoint, "the connection closed before an answer")
        buffer += chunk
    head, body = buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ApiProtocolError(endpoint, f"not an HTTP status line: {lines[0][:80]!r}") from None
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in lines[1:])
    }
    try:
        length = int(headers.get("content-length", "0") or 0)
    except ValueError:
        raise ApiProtocolError(endpoint, f"Content-Length {headers['content-length']!r}") from None
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ApiProtocolError(endpoint, "the connection closed inside the answer's body")
        body += chunk
    return status, body[:length]
