"""Host side of Cloud Hypervisor's hybrid vsock: a unix socket plus a one-line handshake.

The client connects to the VM's vsock unix socket, writes ``CONNECT <port>\\n`` and reads one
line. ``OK <n>\\n`` (``n`` is the VMM's host-side port, not the guest port) means the guest
accepted; after it the stream is a plain byte pipe. When nothing listens on the guest port the
VMM simply closes the connection, so an early EOF means "not yet" and callers retry.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from vmsandbox.hypervisor.cloud_hypervisor.errors import AgentUnreachable

_OK_LINE = re.compile(rb"^OK \d+$")
#: The reply line is short ("OK 1073741825"); anything longer is not the VMM talking.
_MAX_REPLY = 64


class HandshakeRefused(Exception):
    """One attempt failed; the words say why (for the final error)."""


def connect_once(vsock_socket: Path, port: int, timeout: float) -> socket.socket:
    """One attempt: connect, send ``CONNECT port``, read exactly the reply line."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(vsock_socket))
            sock.sendall(f"CONNECT {port}\n".encode())
            line = _read_line(sock)
        except TimeoutError as exc:
            raise HandshakeRefused(f"no reply within {timeout:g} s") from exc
        except OSError as exc:
            raise HandshakeRefused(exc.strerror or str(exc)) from exc
        if not _OK_LINE.match(line):
            raise HandshakeRefused(f"unexpected reply {line!r}")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def _read_line(sock: socket.socket) -> bytes:
    """Read up to the first newline, byte by byte, so no payload after it is swallowed."""
    line = bytearray()
    while len(line) <= _MAX_REPLY:
        byte = sock.recv(1)
        if not byte:
            if line:
                raise HandshakeRefused(f"connection closed after {bytes(line)!r}")
            raise HandshakeRefused("connection closed without OK (guest not listening yet)")
        if byte == b"\n":
            return bytes(line)
        line += byte
    raise HandshakeRefused(f"reply longer than {_MAX_REPLY} bytes")


def connect_until(
    vsock_socket: Path,
    port: int,
    timeout: float,
    check_alive: Callable[[], None] = lambda: None,
    attempt_timeout: float = 2.0,
) -> socket.socket:
    """Retry :func:`connect_once` with backoff until ``timeout``.

    ``check_alive`` runs before every attempt and raises when retrying is pointless (the VMM
    died); its exception propagates unchanged.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    last = "no attempt made"
    while True:
        check_alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentUnreachable(str(vsock_socket), port, timeout, last)
        try:
            return connect_once(vsock_socket, port, min(attempt_timeout, max(remaining, 0.01)))
        except HandshakeRefused as exc:
            last = str(exc)
        time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 0.2)
