"""Kubernetes' WebSocket port-forward protocol, relayed to TCP connections into a sandbox.

As the kubelet speaks it (``v4.channel.k8s.io``, what the Kubernetes Python client's
``portforward()`` offers): the N-th requested port has a data channel ``2N`` and an error
channel ``2N+1``; the first message on each carries the port as two little-endian bytes. The
client writes the port's bytes on its data channel, the server writes the sandbox's bytes back
on it and a failure as text on the error channel. The first message byte is the channel.

A v4 WebSocket cannot close one direction: when the sandbox ends its side the session ends.
The kubelet speaks only v4 here (a client offering ``v5.channel.k8s.io`` too, as the Python
client does, gets v4). This agent also speaks :data:`HALF_CLOSE`, offered by
``vmsandbox port-forward``: v4 framing plus ``[255, channel]`` to end one direction of a data
channel (as ``v5.channel.k8s.io`` does for exec), so a client that shuts down its sending side
still gets the whole answer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from vmsandbox.node_agent.websocket import WebSocket, WebSocketError

log = logging.getLogger("vmsandbox.node_agent.portforward")

HALF_CLOSE = "v4.portforward.vmsandbox.io"
V4 = "v4.channel.k8s.io"
#: Ours, best first; a client offering none of them gets v4 framing, as the kubelet does.
SUBPROTOCOLS = (HALF_CLOSE, V4)
CLOSE = 255
#: Channels are one byte and 255 is the close signal: at most 127 ports in one session.
MAX_PORTS = 16
CHUNK = 64 * 1024
#: After the server ends a session, how long the client has to answer the close.
CLOSE_GRACE = 5.0


class BadPorts(ValueError):
    """The ``ports`` query names no port, or something that is not one."""


def parse_ports(query: str) -> list[int]:
    """``ports=8080`` (the API server's name) or ``port=`` (the kubelet's), repeated or comma-separated."""
    params = parse_qs(query, keep_blank_values=True)
    raw = [p for key in ("ports", "port") for value in params.get(key, []) for p in value.split(",")]
    if not raw:
        raise BadPorts("ports: at least one port is required, e.g. ?ports=8080")
    ports: list[int] = []
    for value in raw:
        text = value.strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise BadPorts(f"ports: {value!r} is not a port number (1-65535)")
        if int(text) in ports:
            raise BadPorts(f"ports: {int(text)} is named twice")
        ports.append(int(text))
    if len(ports) > MAX_PORTS:
        raise BadPorts(f"ports: at most {MAX_PORTS} ports in one session")
    return ports


#: port -> a connected socket into the sandbox, or the reason there is none.
Dial = Callable[[int], socket.socket | str]


@dataclass
class _Port:
    index: int
    number: int
    sock: socket.socket | None
    #: The sandbox sent its last byte / the client sent its last byte.
    read_done: bool = False
    write_done: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def data(self) -> int:
        return 2 * self.index

    @property
    def finished(self) -> bool:
        return self.sock is None or (self.read_done and self.write_done)


class Session:
    """One WebSocket's forwarded ports; :meth:`run` returns when every connection is over."""

    def __init__(self, ws: WebSocket, protocol: str | None, ports: list[int], dial: Dial) -> None:
        self.ws = ws
        self.half_close = protocol == HALF_CLOSE
        self.ports = [_Port(i, number, None) for i, number in enumerate(ports)]
        self.dial = dial
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._finished = threading.Event()

    def run(self) -> None:
        try:
            self._open()
            if all(port.finished for port in self.ports):
                self._end()
            else:
                self._client_loop()
        finally:
            self._teardown()

    def _open(self) -> None:
        for port in self.ports:
            prefix = struct.pack("<H", port.number)
            self.ws.send(bytes([port.data]) + prefix)
            self.ws.send(bytes([port.data + 1]) + prefix)
        for port in self.ports:
            outcome = self.dial(port.number)
            if isinstance(outcome, str):
                self.ws.send(bytes([port.data + 1]) + outcome.encode())
                continue
            port.sock = outcome
            port.thread = threading.Thread(
                target=self._sandbox_to_client, args=(port,), name=f"portforward-{port.number}", daemon=True
            )
            port.thread.start()

    # -- client -> sandbox -----------------------------------------------------------------

    def _client_loop(self) -> None:
        while True:
            try:
                message = self.ws.receive()
            except (OSError, WebSocketError) as exc:
                log.debug("port-forward client gone: %s", exc)
                return
            if message is None:
                return
            if not message:
                continue
            channel, payload = message[0], message[1:]
            if channel == CLOSE and self.half_close and payload:
                self._client_closed(payload[0])
            elif channel % 2 == 0 and channel // 2 < len(self.ports):
                self._to_sandbox(self.ports[channel // 2], payload)

    def _to_sandbox(self, port: _Port, payload: bytes) -> None:
        if port.sock is None or port.write_done or not payload:
            return
        try:
            port.sock.sendall(payload)
        except OSError as exc:
            log.debug("port %d: the sandbox side refused more bytes: %s", port.number, exc)
            with self._lock:
                port.write_done = True

    def _client_closed(self, channel: int) -> None:
        if channel % 2 or channel // 2 >= len(self.ports):
            return
        port = self.ports[channel // 2]
        if port.sock is not None and not port.write_done:
            with contextlib.suppress(OSError):
                port.sock.shutdown(socket.SHUT_WR)
        with self._lock:
            port.write_done = True
        self._end_if_finished()

    # -- sandbox -> client -----------------------------------------------------------------

    def _sandbox_to_client(self, port: _Port) -> None:
        assert port.sock is not None
        try:
            while data := port.sock.recv(CHUNK):
                self.ws.send(bytes([port.data]) + data)
        except OSError as exc:
            if self._ended.is_set():
                return
            log.debug("port %d: the connection ended: %s", port.number, exc)
        with self._lock:
            port.read_done = True
            if not self.half_close:
                port.write_done = True  # v4: one side's end is the session's end
        if self.half_close:
            with contextlib.suppress(OSError):
                self.ws.send(bytes([CLOSE, port.data]))
        self._end_if_finished()

    # -- the end ---------------------------------------------------------------------------

    def _end_if_finished(self) -> None:
        with self._lock:
            done = all(port.finished for port in self.ports)
        if done:
            self._end()

    def _end(self) -> None:
        """Send the close; a client that never answers it is cut off after :data:`CLOSE_GRACE`."""
        if self._ended.is_set():
            return
        self._ended.set()
        self.ws.close()
        threading.Thread(target=self._cut_off, name="portforward-close", daemon=True).start()

    def _cut_off(self) -> None:
        if not self._finished.wait(CLOSE_GRACE):
            with contextlib.suppress(OSError):
                self.ws.sock.shutdown(socket.SHUT_RDWR)

    def _teardown(self) -> None:
        self._ended.set()
        self._finished.set()
        for port in self.ports:
            if port.sock is not None:
                with contextlib.suppress(OSError):
                    port.sock.shutdown(socket.SHUT_RDWR)
        for port in self.ports:
            if port.thread is not None:
                port.thread.join(CLOSE_GRACE)
            if port.sock is not None:
                port.sock.close()
