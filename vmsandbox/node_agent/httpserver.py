"""The agent's one HTTP port: ``/healthz``, ``/readyz``, ``/metrics`` and ``/logs/<namespace>/<name>``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("vmsandbox.node_agent.http")

#: (ok, explanation)
Probe = Callable[[], tuple[bool, str]]
LogLookup = Callable[[str, str], Path | None]


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
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s %s", self.address_string(), format % args)

            def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path in ("/healthz", "/readyz"):
                    ok, why = (outer.healthy if path == "/healthz" else outer.ready)()
                    self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, (why + "\n").encode())
                elif path == "/metrics":
                    self._send(HTTPStatus.OK, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path.startswith("/logs/"):
                    parts = [unquote(p) for p in path[len("/logs/") :].split("/")]
                    if len(parts) != 2 or not all(parts):
                        self._send(HTTPStatus.BAD_REQUEST, b"expected /logs/<namespace>/<name>\n")
                        return
                    found = outer.log_file(parts[0], parts[1])
                    if found is None or not found.is_file():
                        self._send(
                            HTTPStatus.NOT_FOUND, f"no container log for {parts[0]}/{parts[1]}\n".encode()
                        )
                        return
                    self._send(HTTPStatus.OK, found.read_bytes())
                else:
                    self._send(HTTPStatus.NOT_FOUND, b"not found\n")

        self.healthy = healthy
        self.ready = ready
        self.registry = registry
        self.log_file = log_file
        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
