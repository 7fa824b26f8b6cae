"""``/portforward/<namespace>/<name>?ports=P[,P...]`` (WebSocket) on the agent's HTTP port.

Needs a bearer token of a user allowed ``create`` on ``vmsandboxes/portforward`` in the
sandbox's namespace (as exec). The only thing the caller chooses is the port: the agent
connects to the sandbox's own address, from the node's side of the bridge, and nowhere else.
Refusals come before the upgrade as plain HTTP answers: 400 a bad port, 401/403, 404 no such
sandbox on this node, 409 not Running or without a network. A port nothing listens on is
reported on the port's error channel after the upgrade, as the kubelet does.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from vmsandbox.node_agent.network.dial import dial
from vmsandbox.node_agent.network.errors import NetworkError
from vmsandbox.node_agent.portforward import SUBPROTOCOLS, V4, Session, parse_ports
from vmsandbox.node_agent.remotecommand import BadQuery
from vmsandbox.node_agent.streamroutes import (
    REFUSALS,
    SandboxRoute,
    _sandbox_of,
    answer_refusal,
)
from vmsandbox.node_agent.websocket import WebSocket, accept_key, choose_protocol

log = logging.getLogger("vmsandbox.node_agent.portforward")

PREFIX = "/portforward/"
SUBRESOURCE = "portforward"
#: Seconds to wait for the sandbox to accept a forwarded connection.
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ForwardTarget:
    """Where a sandbox listens: its own address, reached from ``netns`` (None: the agent's)."""

    ip: str
    netns: Path | None


class PortForwardRoute(SandboxRoute[ForwardTarget]):
    prefixes = (PREFIX,)

    def serve(self, handler: BaseHTTPRequestHandler, path: str, query: str) -> None:
        try:
            self._serve(handler, path, query)
        except REFUSALS as exc:
            answer_refusal(handler, exc)

    def _serve(self, handler: BaseHTTPRequestHandler, path: str, query: str) -> None:
        namespace, name = _sandbox_of(path, PREFIX)
        user = self.authorize(handler.headers.get("Authorization"), namespace, name, "create", SUBRESOURCE)
        ports = parse_ports(query)
        target = self.lookup(namespace, name)
        if handler.headers.get("Upgrade", "").lower() != "websocket" or not handler.headers.get(
            "Sec-WebSocket-Key"
        ):
            raise BadQuery("port-forward needs a WebSocket upgrade (Upgrade: websocket)")
        offered = handler.headers.get("Sec-WebSocket-Protocol")
        protocol = choose_protocol(offered, SUBPROTOCOLS)
        if protocol is None and offered:
            raise BadQuery(f"Sec-WebSocket-Protocol: one of {', '.join(SUBPROTOCOLS)} is required")
        log.info("user %s: port-forward to %s/%s ports %s", user, namespace, name, ",".join(map(str, ports)))
        handler.send_response(HTTPStatus.SWITCHING_PROTOCOLS)
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept_key(handler.headers["Sec-WebSocket-Key"]))
        if protocol is not None:
            handler.send_header("Sec-WebSocket-Protocol", protocol)
        handler.end_headers()
        handler.wfile.flush()
        handler.connection.settimeout(None)  # a forwarded connection may sit idle for long
        handler.close_connection = True

        def connect(port: int) -> socket.socket | str:
            try:
                return dial(target.netns, target.ip, port, CONNECT_TIMEOUT)
            except (OSError, NetworkError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                return f"error forwarding port {port} to sandbox {namespace}/{name}: {reason}"

        ws = WebSocket(handler.connection, handler.rfile)
        Session(ws, protocol or V4, ports, connect).run()
