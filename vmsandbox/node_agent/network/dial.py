"""A TCP connection from the node's side of the sandbox network, for port-forwarding.

The bridge may live in another network namespace than the agent's own (``networkNamespace``,
used by ``vmsandbox dev`` and the tests). A socket belongs to the namespace of the thread that
creates it, so the connection is made from a short-lived thread that first joins that namespace
with ``setns(2)``; the socket keeps working after the thread is gone, and the agent's other
threads never leave their namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from pathlib import Path

from vmsandbox.node_agent.network.errors import NetworkError

CLONE_NEWNET = 0x40000000


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _connect(ip: str, port: int, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def dial(netns: Path | None, ip: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A connected socket to ``ip:port`` as seen from ``netns`` (None: this process's namespace).

    Raises OSError as ``connect`` would (refused, timed out, unreachable).
    """
    if netns is None:
        return _connect(ip, port, timeout)
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            _setns(netns)
            result.append(_connect(ip, port, timeout))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=run, name="dial", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    if not result:
        raise NetworkError(f"connecting to {ip}:{port} in {netns} did not finish", step="port-forward")
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
