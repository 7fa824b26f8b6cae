"""The agent's one HTTP port: ``/healthz``, ``/readyz``, ``/metrics``, ``/logs/<namespace>/<name>``,
``/exec`` and ``/files`` (:mod:`vmsandbox.node_agent.streamroutes`) and ``/portforward``
(:mod:`vmsandbox.node_agent.forwardroute`).

The probes and metrics are open (the kubelet and Prometheus call them); everything else needs a
bearer token that the API server accepts for a user allowed ``get`` on ``vmsandboxes/log`` in
the sandbox's namespace. Logs are streamed: ``?tailBytes=N`` sends only the last N bytes,
``?follow=true`` keeps the response open while the sandbox runs.
"""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vmsandbox.node_agent.access import AccessDenied
from vmsandbox.node_agent.forwardroute import PortForwardRoute
from vmsandbox.node_agent.logstream import stream_log
from vmsandbox.node_agent.streamroutes import StreamRoutes, answer

log = logging.getLogger("vmsandbox.node_agent.http")

#: (ok, explanation)
Probe = Callable[[], tuple[bool, str]]


@dataclass(frozen=True)
class LogSource:
    """A sandbox's current container log, and whether more may still be written to it."""

    path: Path
    running: Callable[[], bool]


LogLookup = Callable[[str, str], LogSource | None]


class Access(Protocol):
    """Who the caller is, and whether they may read a sandbox's logs (raise AccessDenied)."""

    def authenticate(self, authorization: str | None) -> dict[str, Any]: ...

    def check(self, authorization: str | None, namespace: str, name: str) -> str: ...


class BadRequest(ValueError):
    pass


class ListeningServer(ThreadingHTTPServer):
    """The port, bound without looking the agent's own address up in DNS.

    ``HTTPServer.server_bind`` asks ``socket.getfqdn`` for a name nothing here uses: with the
    node's resolver down or unreachable, an agent coming back would wait out the resolver's
    timeouts (seconds to tens of seconds) before its probes and routes answered.
    """

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


@dataclass(frozen=True)
class LogQuery:
    namespace: str
    name: str
    tail_bytes: int | None
    follow: bool


def parse_log_query(path: str, query: str) -> LogQuery:
    parts = [unquote(p) for p in path[len("/logs/") :].split("/")]
    if len(parts) != 2 or not all(parts):
        raise BadRequest("expected /logs/<namespace>/<name>")
    params = parse_qs(query)
    tail: int | None = None
    if "tailBytes" in params:
        raw = params["tailBytes"][-1]
        if not raw.isdigit():
            raise BadRequest("tailBytes: must be a non-negative integer")
        tail = int(raw)
    follow = params.get("follow", ["false"])[-1].lower()
    if follow not in ("true", "false", "1", "0"):
        raise BadRequest("follow: must be true or false")
    return LogQuery(parts[0], parts[1], tail, follow in ("true", "1"))


class AgentHTTPServer:
    def __init__(
        self,
        address: str,
        port: int,
        *,
        healthy: Probe,
        ready: Probe,
        registry: CollectorRegistry,
        log_file: LogLookup,
        access: Access,
        streams: StreamRoutes | None = None,
        portforward: PortForwardRoute | None = None,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 for chunked transfer: a follower gets each piece of output as it is written.
            protocol_version = "HTTP/1.1"
            #: Seconds a connection may sit idle (or a reader stall) before it is dropped.
            timeout = 60

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s %s", self.address_string(), format % args)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path in ("/healthz", "/readyz"):
                    ok, why = (outer.healthy if url.path == "/healthz" else outer.ready)()
                    answer(self, HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, why)
                elif url.path == "/metrics":
                    answer(self, HTTPStatus.OK, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif url.path.startswith("/logs/"):
                    self._logs(url.path, url.query)
                elif outer.streams is not None and outer.streams.handles(url.path):
                    outer.streams.serve(self, "GET", url.path, url.query)
                elif outer.portforward is not None and outer.portforward.handles(url.path):
                    outer.portforward.serve(self, url.path, url.query)
                else:
                    self._guarded_not_found()

            def do_PUT(self) -> None:
                url = urlsplit(self.path)
                if outer.streams is not None and outer.streams.handles(url.path):
                    outer.streams.serve(self, "PUT", url.path, url.query)
                else:
                    self.close_connection = True
                    self._guarded_not_found()

            def _guarded_not_found(self) -> None:
                """Unknown paths say nothing to a caller without a valid token either."""
                try:
                    outer.access.authenticate(self.headers.get("Authorization"))
                except AccessDenied as exc:
                    answer(self, exc.status, exc.detail)
                    return
                answer(self, HTTPStatus.NOT_FOUND, "not found")

            def _logs(self, path: str, query: str) -> None:
                try:
                    asked = parse_log_query(path, query)
                except BadRequest as exc:
                    answer(self, HTTPStatus.BAD_REQUEST, str(exc))
                    return
                try:
                    user = outer.access.check(self.headers.get("Authorization"), asked.namespace, asked.name)
                except AccessDenied as exc:
                    answer(self, exc.status, exc.detail)
                    return
                source = outer.log_file(asked.namespace, asked.name)
                if source is None or not source.path.is_file():
                    answer(self, HTTPStatus.NOT_FOUND, f"no container log for {asked.namespace}/{asked.name}")
                    return
                log.debug("user %s reads the log of %s/%s", user, asked.namespace, asked.name)
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    stream_log(
                        source.path,
                        self._write_chunk,
                        tail_bytes=asked.tail_bytes,
                        follow=asked.follow,
                        running=source.running,
                    )
                    self.wfile.write(b"0\r\n\r\n")
                except OSError as exc:  # the reader went away
                    log.debug("log stream of %s/%s ended: %s", asked.namespace, asked.name, exc)
                    self.close_connection = True

            def _write_chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        self.healthy = healthy
        self.ready = ready
        self.registry = registry
        self.log_file = log_file
        self.access = access
        self.streams = streams
        self.portforward = portforward
        self.server = ListeningServer((address, port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
