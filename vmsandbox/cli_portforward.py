"""``vmsandbox port-forward NAME [LOCAL:]REMOTE...``: local TCP ports to ports inside a sandbox, as
``kubectl port-forward`` for pods, through the sandbox's node agent.

Every accepted local connection gets a WebSocket of its own to the agent, which connects to the
sandbox's own address on the remote port; nothing else is reachable this way.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmsandbox.errors import VMSandboxError
from vmsandbox.sdk.portforward import ForwardedConnection, ForwardError
from vmsandbox.sdk.remote import Agent


class PortSpecError(VMSandboxError):
    step = "port-forward"


@dataclass(frozen=True)
class PortPair:
    local: int
    remote: int


def _port(text: str, what: str, spec: str, minimum: int = 1) -> int:
    if not text.isdigit() or not minimum <= int(text) <= 65535:
        raise PortSpecError(f"{spec!r}: {what} port {text!r} is not a port number ({minimum}-65535)")
    return int(text)


def parse_pair(spec: str) -> PortPair:
    """``8080`` (same port here), ``9090:8080``, ``:8080`` (any free local port)."""
    local, sep, remote = spec.rpartition(":")
    if not sep:
        return PortPair(_port(spec, "the", spec), _port(spec, "the", spec))
    return PortPair(_port(local, "local", spec, 0) if local else 0, _port(remote, "remote", spec))


def sandbox_network_problem(item: dict[str, Any]) -> str | None:
    """Why port-forwarding to this sandbox cannot work, from its status; None when it can."""
    meta, status = item.get("metadata") or {}, item.get("status") or {}
    ref = f"{meta.get('namespace')}/{meta.get('name')}"
    if status.get("phase") != "Running":
        return f"sandbox {ref} is {status.get('phase') or 'Pending'}, not Running"
    network = status.get("network") or {}
    if network.get("mode") == "none":
        return f"sandbox {ref} has no network (spec.network.mode is none): nothing to forward to"
    if not network.get("ip"):
        return f"sandbox {ref} has no address on its node (the node gives sandboxes no network)"
    return None


def _serve(conn: socket.socket, open_remote: Callable[[], ForwardedConnection], remote: int) -> None:
    with conn:
        try:
            forwarded = open_remote()
        except ForwardError as exc:
            print(f"error forwarding port {remote}: {exc.detail}", file=sys.stderr, flush=True)
            return
        forwarded.relay(conn)
        if forwarded.error:
            print(forwarded.error, file=sys.stderr, flush=True)


Opener = Callable[[], ForwardedConnection]


def _accept_loop(listener: socket.socket, open_remote: Opener, remote: int) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve, args=(conn, open_remote, remote), daemon=True).start()


def forward(
    agent: Agent, namespace: str, name: str, pairs: list[PortPair], address: str, stop: threading.Event
) -> int:
    listeners: list[socket.socket] = []
    try:
        for pair in pairs:
            listener = socket.create_server((address, pair.local))
            listeners.append(listener)
            bound = listener.getsockname()[1]
            print(f"Forwarding from {address}:{bound} -> {pair.remote}", flush=True)

            def open_remote(remote: int = pair.remote) -> ForwardedConnection:
                return ForwardedConnection(agent, namespace, name, remote)

            threading.Thread(
                target=_accept_loop, args=(listener, open_remote, pair.remote), daemon=True
            ).start()
        stop.wait()
    finally:
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()
    return 0


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    namespaced: Callable[[argparse.ArgumentParser], None],
) -> None:
    pf = sub.add_parser(
        "port-forward", help="forward local ports to ports inside a running sandbox (as kubectl port-forward)"
    )
    pf.add_argument("name")
    pf.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE", help="e.g. 8080, 9090:8080, :8080")
    pf.add_argument("--address", default="127.0.0.1", help="local address to listen on")
    namespaced(pf)
