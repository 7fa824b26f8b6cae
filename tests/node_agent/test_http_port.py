"""The agent's HTTP port comes up without asking DNS anything (the node's resolver may be down)."""

from __future__ import annotations

import http.client
import socket
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from vmsandbox.node_agent.access import AccessDenied
from vmsandbox.node_agent.httpserver import AgentHTTPServer


class _NoOne:
    def authenticate(self, authorization: str | None) -> dict[str, Any]:
        raise AccessDenied(401, "no token")

    def check(self, authorization: str | None, namespace: str, name: str) -> str:
        raise AccessDenied(401, "no token")


def _no_dns(*args: object) -> str:
    raise AssertionError(f"the agent's port asked DNS for {args}")


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
def test_the_port_binds_and_answers_without_a_dns_lookup(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    for name in ("getfqdn", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, name, _no_dns)
    server = AgentHTTPServer(
        address,
        0,
        healthy=lambda: (True, "alive"),
        ready=lambda: (False, "not yet"),
        registry=CollectorRegistry(),
        log_file=lambda namespace, name: None,
        access=_NoOne(),
    )
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for path, status, body in (("/healthz", 200, "alive"), ("/readyz", 503, "not yet")):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert (resp.status, resp.read().decode().strip()) == (status, body)
        conn.request("GET", "/elsewhere")  # routes behind a token still refuse a caller without one
        assert conn.getresponse().status == 401
        conn.close()
    finally:
        server.stop()
    with socket.socket() as probe:  # and the port is released
        probe.bind((address, server.port))
