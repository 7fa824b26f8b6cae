"""The aggregator's routing table and identity headers, without a cluster."""

from __future__ import annotations

import base64

from multidict import CIMultiDict

from vmsandbox.devcluster.aggregator import Aggregator, routing_table
from vmsandbox.devcluster.rbac import UserInfo


def _api_service(**spec: object) -> dict[str, object]:
    base = {
        "group": "g.example",
        "version": "v1",
        "service": {"namespace": "ns", "name": "svc", "port": 8443},
    }
    return {"kind": "APIService", "metadata": {"name": "v1.g.example"}, "spec": {**base, **spec}}


def _service(ip: str = "127.0.0.1") -> dict[str, object]:
    return {"kind": "Service", "metadata": {"namespace": "ns", "name": "svc"}, "spec": {"clusterIP": ip}}


def test_routes_to_the_service_cluster_ip_with_its_ca() -> None:
    table = routing_table([_api_service(caBundle=base64.b64encode(b"PEM").decode()), _service()])
    backend = table[("g.example", "v1")]
    assert backend.url == "https://127.0.0.1:8443"
    assert backend.server_name == "svc.ns.svc"
    assert backend.ca_bundle == b"PEM" and not backend.insecure


def test_no_route_without_a_service_or_an_address() -> None:
    assert routing_table([_api_service()]) == {}
    assert routing_table([_api_service(), _service("None")]) == {}
    local = {
        "kind": "APIService",
        "metadata": {"name": "v1.apps"},
        "spec": {"group": "apps", "version": "v1"},
    }
    assert routing_table([local, _service()]) == {}


def test_identity_headers_replace_what_the_client_sent() -> None:
    class Request:
        headers = CIMultiDict(
            [
                ("Authorization", "Bearer alice"),
                ("X-Remote-User", "system:admin"),
                ("x-remote-group", "system:masters"),
                ("X-Remote-Extra-Scopes", "all"),
                ("Sec-WebSocket-Key", "abc"),
                ("Accept", "application/json"),
            ]
        )

    async def fetch(_path: str) -> tuple[int, object]:
        return 404, {}

    headers = Aggregator(fetch, None)._headers(Request(), UserInfo("alice", ("dev", "system:authenticated")))  # type: ignore[arg-type]
    assert headers.getall("X-Remote-User") == ["alice"]
    assert headers.getall("X-Remote-Group") == ["dev", "system:authenticated"]
    assert "Authorization" not in headers and "X-Remote-Extra-Scopes" not in headers
    assert "Sec-WebSocket-Key" not in headers and headers["Accept"] == "application/json"
