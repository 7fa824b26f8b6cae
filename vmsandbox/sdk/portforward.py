"""The client end of a node agent's ``/portforward`` route: one TCP connection per WebSocket.

Kubernetes' port-forward framing (see :mod:`vmsandbox.node_agent.portforward`): channel 0 carries
the port's bytes, channel 1 the agent's error text, and each starts with the port number. This
client offers the agent's ``v4.portforward.vmsandbox.io`` first: v4 framing in which either side
can end its direction of the connection (``[255, 0]``) without ending the other.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from urllib.parse import urlencode

import websocket

from vmsandbox.sdk.remote import Agent, RemoteError

SUBPROTOCOLS = ["v4.portforward.vmsandbox.io", "v4.channel.k8s.io"]
DATA, ERROR, CLOSE = 0, 1, 255
CHUNK = 64 * 1024


class ForwardError(RemoteError):
    step = "port-forward"


class ForwardedConnection:
    """One connection to ``port`` inside the sandbox; :meth:`relay` pumps a local socket through it."""

    def __init__(self, agent: Agent, namespace: str, name: str, port: int, *, timeout: float = 30) -> None:
        if not 1 <= port <= 65535:
            raise ForwardError(f"{port} is not a port number (1-65535)")
        self.port = port
        url = agent.url("portforward", namespace, name).replace("http", "ws", 1)
        url += "?" + urlencode({"ports": str(port)})
        header = [f"{k}: {v}" for k, v in agent.auth().items()]
        try:
            self.ws = websocket.create_connection(
                url, header=header, subprotocols=SUBPROTOCOLS, timeout=timeout, sslopt=agent.sslopt()
            )
        except websocket.WebSocketBadStatusException as exc:
            body = (exc.resp_body or b"").decode(errors="replace").strip()
            raise ForwardError(body or str(exc), status=exc.status_code) from None
        except (OSError, websocket.WebSocketException) as exc:
            raise ForwardError(f"cannot reach the agent at {agent.endpoint}: {exc}") from None
        self.half_close = self.ws.getsubprotocol() == SUBPROTOCOLS[0]
        prefix = struct.pack("<H", port)
        try:
            first = {self._message() for _ in range(2)}
        except (OSError, websocket.WebSocketException) as exc:
            self.close()
            raise ForwardError(f"the port-forward stream broke: {exc}") from None
        if first != {bytes([DATA]) + prefix, bytes([ERROR]) + prefix}:
            self.close()
            raise ForwardError(f"the agent did not open port {port}")
        self.ws.settimeout(None)
        self.error: str | None = None

    def _message(self) -> bytes:
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ForwardError("the agent closed the port-forward stream")
        return bytes(data)

    def relay(self, local: socket.socket) -> None:
        """Copy both ways until both are done; sets :attr:`error` to what the agent reported."""
        sender = threading.Thread(
            target=self._local_to_remote, args=(local,), daemon=True, name="forward-out"
        )
        sender.start()
        try:
            self._remote_to_local(local)
        finally:
            with contextlib.suppress(OSError):
                local.shutdown(socket.SHUT_RDWR)
            sender.join(5)
            self.close()

    def _local_to_remote(self, local: socket.socket) -> None:
        try:
            while data := local.recv(CHUNK):
                self.ws.send_binary(bytes([DATA]) + data)
            if self.half_close:
                self.ws.send_binary(bytes([CLOSE, DATA]))
            else:  # v4 has no half-close: the end of this side ends the connection
                self.close()
        except (OSError, websocket.WebSocketException):
            return

    def _remote_to_local(self, local: socket.socket) -> None:
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except (OSError, websocket.WebSocketException):
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE or not data:
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return
                continue
            channel, payload = data[0], bytes(data[1:])
            if channel == DATA:
                try:
                    local.sendall(payload)
                except OSError:
                    return
            elif channel == ERROR:
                self.error = (self.error or "") + payload.decode(errors="replace")
                return
            elif channel == CLOSE and payload[:1] == bytes([DATA]):
                with contextlib.suppress(OSError):
                    local.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close()
