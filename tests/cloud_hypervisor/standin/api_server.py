"""HTTP/1.1 on the API unix socket, with the quirks of micro_http (Cloud Hypervisor's server).

* Bodies are read by ``Content-Length`` only; a length of 0 means "no body". More than 51 200
  bytes is a parse error: 400 with micro_http's own ``{ "error": ... }`` text, connection closed.
* ``Expect: 100-continue`` gets an interim 100.
* Every response says ``Server: Cloud Hypervisor API`` and ``Connection: keep-alive``; a
  response without a body (204, and the bare 400s) has neither Content-Length nor Content-Type.
* At most 10 connections; the 11th gets a 503 and is closed.
* Requests are executed one at a time, as by the VMM's single control loop.
* File descriptors sent with a request (SCM_RIGHTS, as ``vm.add-net`` takes a NIC's taps) go to
  the VMM with it; the VMM closes those it does not keep.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from standin.knobs import Knobs
from standin.vmm import Reply, StandinVmm, log

BODY_LIMIT = 51200
#: Descriptors one read takes (the real server takes a NIC's queue pairs' taps).
MAX_FDS = 16
MAX_CONNECTIONS = 10
_MAX_HEAD = 8192
_SERVER_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nServer: Cloud Hypervisor API\r\nConnection: close\r\n"
    b'Content-Length: 40\r\n\r\n{ "error": "Too many open connections" }'
)


def render(reply: Reply) -> bytes:
    reason = HTTPStatus(reply.status).phrase
    head = [f"HTTP/1.1 {reply.status} {reason}", "Server: Cloud Hypervisor API", "Connection: keep-alive"]
    body = b""
    if reply.body is not None:
        body = reply.body
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _parse_error(words: str) -> bytes:
    text = f'{{ "error": "{words}\\nAll previous unanswered requests will be dropped." }}'.encode()
    return (
        b"HTTP/1.1 400 Bad Request\r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text
    )


@dataclass(eq=False)
class ApiServer:
    """The API socket's server; ``_on_exit`` gets the path of a request after which the VMM exits."""

    _listener: socket.socket
    _vmm: StandinVmm
    _knobs: Knobs
    _on_exit: Callable[[str], None]
    _dispatch: threading.Lock = field(default_factory=threading.Lock, init=False)
    _count_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _connections: set[socket.socket] = field(default_factory=set, init=False)
    _closed: bool = field(default=False, init=False)
    _record: Path | None = field(init=False)

    def __post_init__(self) -> None:
        self._record = Path(self._knobs.record) if self._knobs.record else None

    def start(self) -> None:
        threading.Thread(target=self._accept_loop, name="http-server", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._count_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._count_lock:
                full = len(self._connections) >= MAX_CONNECTIONS
                if not full:
                    self._connections.add(conn)
            if full:
                with contextlib.suppress(OSError):
                    conn.sendall(_SERVER_FULL)
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._serve_requests(conn)
        except OSError:
            pass
        finally:
            with self._count_lock:
                self._connections.discard(conn)
            conn.close()

    def _serve_requests(self, conn: socket.socket) -> None:
        pending_fds: list[int] = []

        def recv() -> bytes:
            data, fds, _, _ = socket.recv_fds(conn, 65536, MAX_FDS)
            pending_fds.extend(fds)
            return data

        try:
            self._requests(conn, recv, pending_fds)
        finally:
            for fd in pending_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _requests(self, conn: socket.socket, recv: Callable[[], bytes], pending_fds: list[int]) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                if len(buffer) > _MAX_HEAD:
                    conn.sendall(_parse_error("Header is longer than the limit"))
                    return
                data = recv()
                if not data:
                    return
                buffer += data
            if "never-answer-ping" in self._knobs.faults:
                while recv():  # hold the connection open, answer nothing
                    pass
                return
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                conn.sendall(_parse_error("Invalid request."))
                return
            method, target, _version = parts
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                conn.sendall(_parse_error("Invalid value. Key:Content-Length"))
                return
            if length > BODY_LIMIT:
                conn.sendall(
                    _parse_error(
                        f"Request payload with size {length} is larger than the limit of {BODY_LIMIT} "
                        "allowed by server."
                    )
                )
                return
            if length > 0 and headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            while len(buffer) < length:
                data = recv()
                if not data:
                    return
                buffer += data
            body: bytes | None = buffer[:length] if length > 0 else None
            buffer = buffer[length:]
            path = target.split("?", 1)[0]
            self._record_request(method, path, body)
            fds, pending_fds[:] = list(pending_fds), []
            with self._dispatch:
                started = time.monotonic()
                reply = self._vmm.handle(method, path, body, fds)
            log(f"{method} {path} -> {reply.status} ({(time.monotonic() - started) * 1000:.1f} ms)")
            conn.sendall(render(reply))
            if reply.exit_after:
                self._on_exit(path)
                return

    def _record_request(self, method: str, path: str, body: bytes | None) -> None:
        if self._record is None:
            return
        text = None if body is None else body.decode("utf-8", "replace")
        entry = {"method": method, "path": path, "body": text}
        with open(self._record, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
