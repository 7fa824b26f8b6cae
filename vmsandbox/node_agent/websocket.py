"""The server side of RFC 6455 WebSockets on the agent's threaded HTTP server.

The agent serves every request from a thread of ``http.server``; exec and attach streams are
long-lived and blocking too, so the upgrade happens in place on the handler's socket instead of
in a second (asyncio) server on another port. Only what the Kubernetes remote-command clients
use is here: binary and text messages, fragmentation, ping/pong and the closing handshake.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from collections.abc import Sequence

from vmsandbox.errors import VMSandboxError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Largest message accepted from a client (stdin chunks and resize messages are far smaller).
MAX_MESSAGE = 4 * 1024 * 1024


class WebSocketError(VMSandboxError):
    step = "websocket"


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def choose_protocol(offered: str | None, supported: Sequence[str]) -> str | None:
    """The first of ``supported`` (ours, best first) that the client offered."""
    names = {p.strip() for p in (offered or "").split(",") if p.strip()}
    return next((p for p in supported if p in names), None)


class WebSocket:
    """One upgraded connection: thread-safe sends, one reader."""

    def __init__(self, sock: socket.socket, reader: object) -> None:
        self.sock = sock
        #: The handler's buffered reader: it may already hold bytes of the first frame.
        self.reader = reader
        self._send_lock = threading.Lock()
        self.closed = False

    def _read(self, n: int) -> bytes:
        data: bytes = self.reader.read(n)  # type: ignore[attr-defined]
        if len(data) != n:
            raise WebSocketError("connection closed inside a frame")
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read(2)
        fin, opcode = bool(first & 0x80), first & 0x0F
        if not second & 0x80:
            raise WebSocketError("client frames must be masked")
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._read(8))
        if length > MAX_MESSAGE:
            raise WebSocketError(f"a {length}-byte frame exceeds the {MAX_MESSAGE}-byte limit")
        mask = self._read(4)
        payload = self._read(length) if length else b""
        return fin, opcode, _unmask(payload, mask)

    def receive(self) -> bytes | None:
        """The next data message, or None once the client closed (its close is answered)."""
        parts: list[bytes] = []
        size = 0
        while True:
            fin, opcode, payload = self._frame()
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.close(payload[:2] if len(payload) >= 2 else b"")
                return None
            if opcode not in (OP_TEXT, OP_BINARY, OP_CONT):
                raise WebSocketError(f"unknown opcode {opcode}")
            parts.append(payload)
            size += len(payload)
            if size > MAX_MESSAGE:
                raise WebSocketError(f"a message exceeds the {MAX_MESSAGE}-byte limit")
            if fin:
                return b"".join(parts)

    def send(self, payload: bytes) -> None:
        self._send(OP_BINARY, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            header = struct.pack(">BB", 0x80 | opcode, length)
        elif length < 1 << 16:
            header = struct.pack(">BBH", 0x80 | opcode, 126, length)
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 127, length)
        with self._send_lock:
            self.sock.sendall(header + payload)

    def close(self, code: bytes = struct.pack(">H", 1000)) -> None:
        with self._send_lock:
            if self.closed:
                return
            self.closed = True
        try:
            header = struct.pack(">BB", 0x80 | OP_CLOSE, len(code))
            self.sock.sendall(header + code)
        except OSError:
            pass


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    # XOR with the 4-byte mask repeated: one big-integer operation instead of a Python loop.
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(len(payload), "big")
