"""``/exec/<namespace>/<name>``, ``/attach/<namespace>/<name>`` (WebSockets) and
``/files/<namespace>/<name>`` on the agent's HTTP port.

Each needs a bearer token of a user allowed ``create`` on ``vmsandboxes/exec`` (resp.
``vmsandboxes/attach``, ``vmsandboxes/files``) in the sandbox's namespace, checked with the API
server as for ``/logs``.
Refusals come before the upgrade, as plain HTTP answers: 400 bad query, 401/403, 404 no such
sandbox on this node, 409 the sandbox is not Running, 400 a path that does not resolve to a
file or directory.

Files: ``GET ?path=P`` streams a file's bytes, or a directory as a tar stream (the
``X-Vmsandbox-Kind`` header says ``file`` or ``dir``); ``GET ?path=P&list=true`` answers a JSON
listing; ``PUT ?path=P[&kind=tar][&mode=0644]`` writes the body to a file, or unpacks it as a tar
stream into the directory P. A read that fails midway ends the response without its last chunk.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import ClassVar, Generic, Literal, TypeVar
from urllib.parse import parse_qs, unquote

from vmsandbox.node_agent.access import AccessDenied
from vmsandbox.node_agent.portforward import BadPorts
from vmsandbox.node_agent.remotecommand import (
    SUBPROTOCOLS,
    BadQuery,
    ExecQuery,
    Stream,
    parse_attach_query,
    parse_exec_query,
    relay,
)
from vmsandbox.node_agent.websocket import WebSocket, accept_key, choose_protocol
from vmsandbox.runtime.client import AgentClient
from vmsandbox.runtime.errors import BadPath, RuntimeError_, WrongState
from vmsandbox.runtime.streams import FromSocket, list_path, read_path, start_attach, start_exec, write_path

log = logging.getLogger("vmsandbox.node_agent.streams")

T = TypeVar("T")

#: (Authorization header, namespace, name, verb, subresource) -> the user; raises AccessDenied.
AuthorizeSubresource = Callable[[str | None, str, str, str, str], str]


class SandboxUnavailable(Exception):
    """The sandbox is not on this node (404) or not Running (409)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Target:
    """Where a sandbox's workload runs: its guest agent and its container id."""

    agent: AgentClient
    container_id: str


ROUTES = ("/exec/", "/attach/", "/files/")


def _sandbox_of(path: str, prefix: str) -> tuple[str, str]:
    parts = [unquote(p) for p in path[len(prefix) :].split("/")]
    if len(parts) != 2 or not all(parts):
        raise BadQuery(f"expected {prefix}<namespace>/<name>")
    return parts[0], parts[1]


class SandboxRoute(Generic[T]):
    """A route under ``<prefix><namespace>/<name>``: ``lookup`` (namespace, name) finds the sandbox on
    this node or raises SandboxUnavailable, ``authorize`` asks whether the caller may use it."""

    prefixes: ClassVar[tuple[str, ...]]

    def __init__(self, lookup: Callable[[str, str], T], authorize: AuthorizeSubresource) -> None:
        self.lookup = lookup
        self.authorize = authorize

    @classmethod
    def handles(cls, path: str) -> bool:
        return path.startswith(cls.prefixes)


class StreamRoutes(SandboxRoute[Target]):
    prefixes = ROUTES

    def serve(self, handler: BaseHTTPRequestHandler, method: str, path: str, query: str) -> None:
        try:
            self._serve(handler, method, path, query)
            return
        except REFUSALS as exc:
            answer_refusal(handler, exc)
        if method == "PUT":
            _linger(handler)

    def _serve(self, handler: BaseHTTPRequestHandler, method: str, path: str, query: str) -> None:
        prefix = next(route for route in ROUTES if path.startswith(route))
        namespace, name = _sandbox_of(path, prefix)
        subresource = prefix.strip("/")
        if prefix != "/files/" and method != "GET":
            raise BadQuery(f"{subresource} is a GET with a WebSocket upgrade")
        user = self.authorize(handler.headers.get("Authorization"), namespace, name, "create", subresource)
        asked = None
        if prefix == "/exec/":
            asked = parse_exec_query(query)
        elif prefix == "/attach/":
            asked = parse_attach_query(query)
        target = self.lookup(namespace, name)
        log.info("user %s: %s %s on %s/%s", user, method, subresource, namespace, name)
        if asked is not None:
            self._exec(handler, target, asked)
        elif method == "GET":
            self._read(handler, target, query)
        else:
            self._write(handler, target, query)

    # -- exec ----------------------------------------------------------------------------

    def _exec(self, handler: BaseHTTPRequestHandler, target: Target, asked: ExecQuery) -> None:
        if handler.headers.get("Upgrade", "").lower() != "websocket" or not handler.headers.get(
            "Sec-WebSocket-Key"
        ):
            raise BadQuery("exec and attach need a WebSocket upgrade (Upgrade: websocket)")
        protocol = choose_protocol(handler.headers.get("Sec-WebSocket-Protocol"), SUBPROTOCOLS)
        if protocol is None:
            raise BadQuery(f"Sec-WebSocket-Protocol: one of {', '.join(SUBPROTOCOLS)} is required")
        stream: Stream
        if asked.command:
            stream = start_exec(
                target.agent, target.container_id, asked.command, stdin=asked.stdin, tty=asked.tty
            )
        else:
            stream = start_attach(target.agent, target.container_id)
        with stream:
            handler.send_response(HTTPStatus.SWITCHING_PROTOCOLS)
            handler.send_header("Upgrade", "websocket")
            handler.send_header("Connection", "Upgrade")
            handler.send_header("Sec-WebSocket-Accept", accept_key(handler.headers["Sec-WebSocket-Key"]))
            handler.send_header("Sec-WebSocket-Protocol", protocol)
            handler.end_headers()
            handler.wfile.flush()
            handler.connection.settimeout(None)  # an interactive session may sit idle for long
            handler.close_connection = True
            relay(WebSocket(handler.connection, handler.rfile), stream, asked)

    # -- files ---------------------------------------------------------------------------

    def _read(self, handler: BaseHTTPRequestHandler, target: Target, query: str) -> None:
        params = parse_qs(query)
        path = _path_param(params)
        if params.get("list", ["false"])[-1].lower() in ("true", "1"):
            entries = list_path(target.agent, target.container_id, path)
            body = json.dumps({"entries": [e.to_wire() for e in entries]}).encode()
            answer(handler, HTTPStatus.OK, body, "application/json")
            return
        with read_path(target.agent, target.container_id, path) as stream:
            handler.send_response(HTTPStatus.OK)
            handler.send_header(
                "Content-Type", "application/x-tar" if stream.kind == "dir" else "application/octet-stream"
            )
            handler.send_header("X-Vmsandbox-Kind", stream.kind)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            try:
                handler.wfile.flush()
                with contextlib.suppress(OSError):  # the chunk framing is written whole, in one send
                    handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                stream.relay(handler.connection, lambda n: b"%x\r\n" % n, b"\r\n", b"0\r\n\r\n")
            except RuntimeError_ as exc:  # headers are out: end without the last chunk
                log.info("read of %s failed midway: %s", path, exc)
                handler.close_connection = True

    def _write(self, handler: BaseHTTPRequestHandler, target: Target, query: str) -> None:
        params = parse_qs(query)
        path = _path_param(params)
        handler.close_connection = True  # a refused or failed upload leaves its body unread
        kind_raw = params.get("kind", ["file"])[-1]
        if kind_raw not in ("file", "tar"):
            raise BadQuery("kind: must be file or tar")
        kind: Literal["file", "tar"] = "tar" if kind_raw == "tar" else "file"
        mode: int | None = None
        if "mode" in params:
            try:
                mode = int(params["mode"][-1], 8)
            except ValueError:
                raise BadQuery("mode: must be octal, e.g. 0644") from None
            if not 0 <= mode <= 0o7777:
                raise BadQuery("mode: must be at most 07777")
        handler.connection.settimeout(None)
        write_path(target.agent, target.container_id, path, _body(handler), kind=kind, mode=mode)
        answer(handler, HTTPStatus.OK, b"ok\n")


def _path_param(params: dict[str, list[str]]) -> str:
    path = params.get("path", [""])[-1]
    if not path.startswith("/"):
        raise BadQuery("path: an absolute path inside the sandbox is required")
    return path


def _body(handler: BaseHTTPRequestHandler) -> Iterator[bytes | FromSocket]:
    """The request body, from Content-Length or chunked transfer encoding: what the request's
    reader already holds, then the rest left on the socket for the guest writer to splice."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        while True:
            try:
                size = int(handler.rfile.readline(MAX_CHUNK_LINE).split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise BadQuery("a malformed chunk size in the request body") from None
            if size == 0:
                while handler.rfile.readline(MAX_CHUNK_LINE) not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield from _pieces(handler, size)
            handler.rfile.readline(MAX_CHUNK_LINE)
    try:
        length = int(handler.headers.get("Content-Length") or 0)
    except ValueError:
        raise BadQuery("Content-Length: not a number") from None
    yield from _pieces(handler, length)


#: The longest chunk-size or trailer line read from a chunked body.
MAX_CHUNK_LINE = 1024


def _pieces(handler: BaseHTTPRequestHandler, size: int) -> Iterator[bytes | FromSocket]:
    """``size`` body bytes: those the reader has buffered, then a :class:`FromSocket` for the rest
    (a plain blocking socket only: a TLS one's bytes must be decrypted here)."""
    rfile, conn = handler.rfile, handler.connection
    plain = type(conn) is socket.socket and conn.gettimeout() is None
    buffered = rfile if plain and isinstance(rfile, io.BufferedReader) else None
    while size > 0:
        # What the reader holds (peek reads once only when it holds nothing), else a big read.
        want = len(buffered.peek(1)) if buffered is not None else READ_PIECE
        piece = rfile.read(min(size, want)) if want else b""
        if not piece:
            raise BadQuery("the request body ended early")
        size -= len(piece)
        yield piece
        if buffered is not None and size:
            yield FromSocket(conn, size)
            return


#: Body bytes read at a time where they cannot be spliced.
READ_PIECE = 1024 * 1024


#: How long a refused upload's unread body is received and dropped after the answer: closing a
#: connection with unread bytes resets it, and a reset can discard the answer before the client,
#: still sending, reads it.
LINGER_SECONDS = 2.0


def _linger(handler: BaseHTTPRequestHandler) -> None:
    """Half-close after a refusal, then drop what the client still sends (up to LINGER_SECONDS)."""
    handler.close_connection = True
    conn = handler.connection
    deadline = time.monotonic() + LINGER_SECONDS
    sink = bytearray(64 * 1024)
    try:
        conn.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not conn.recv_into(sink):
                return
    except OSError:
        return


#: What a subresource route answers before any upgrade (see :func:`answer_refusal`).
REFUSALS = (BadQuery, BadPorts, AccessDenied, SandboxUnavailable, RuntimeError_)


def answer_refusal(handler: BaseHTTPRequestHandler, exc: Exception) -> None:
    """One of :data:`REFUSALS` as a plain answer: the caller's mistake is a 400, access and the
    sandbox's whereabouts carry their own status, a container in the wrong state is a 409, and
    any other runtime failure a 500."""
    if isinstance(exc, AccessDenied | SandboxUnavailable):
        answer(handler, exc.status, exc.detail)
    elif isinstance(exc, WrongState):
        answer(handler, HTTPStatus.CONFLICT, exc.detail)
    elif isinstance(exc, BadQuery | BadPorts | BadPath):
        answer(handler, HTTPStatus.BAD_REQUEST, str(exc))
    else:
        answer(handler, HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))


def answer(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: str | bytes,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    """A plain reply of the agent's HTTP server (a str body ends in a newline); a 401 names the scheme."""
    data = body if isinstance(body, bytes) else (body + "\n").encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    if status == HTTPStatus.UNAUTHORIZED:
        handler.send_header("WWW-Authenticate", 'Bearer realm="vmsandbox-agent"')
    handler.end_headers()
    handler.wfile.write(data)
