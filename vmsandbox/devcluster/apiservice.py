"""What ``vmsandbox dev`` does so that the API path works on this machine: a serving certificate
for the operator's aggregated server, the settings that make the operator serve it, and the
Service and APIService that make the local control plane route ``subresources.vmsandbox.io``
to it (the Service's cluster IP is loopback, where the operator listens)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vmsandbox.api.constants import SUBRESOURCE_GROUP, SUBRESOURCE_VERSION
from vmsandbox.devcluster.tls import make_ca, sign_certificate
from vmsandbox.errors import VMSandboxError

SERVICE_NAME = "vmsandbox-subresources"
API_SERVICE_NAME = f"{SUBRESOURCE_VERSION}.{SUBRESOURCE_GROUP}"


class Answer(Protocol):
    """What is read of the API server's answer (a ``requests.Response`` is one)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


#: (method, path, json body) -> answer, as the caller's admin client sends it.
Send = Callable[..., Answer]


class RegistrationError(VMSandboxError):
    step = "register the aggregated API"


def serving_certificate(directory: Path, namespace: str) -> tuple[Path, Path, Path]:
    """(CA, certificate, key) for ``<service>.<namespace>.svc``, the name the API server checks."""
    ca = make_ca(directory, "subresources")
    host = f"{SERVICE_NAME}.{namespace}.svc"
    cert, key = sign_certificate(ca, directory, SERVICE_NAME, client=False, dns=(host, "localhost"))
    return ca[0], cert, key


def operator_settings(port: int, cert: Path, key: Path) -> dict[str, str]:
    """Environment that makes ``python -m vmsandbox.operator`` serve the group on loopback ``port``."""
    return {
        "VMSANDBOX_OPERATOR_SUBRESOURCES": "true",
        "VMSANDBOX_OPERATOR_SUBRESOURCES_HOST": "127.0.0.1",
        "VMSANDBOX_OPERATOR_SUBRESOURCES_PORT": str(port),
        "VMSANDBOX_OPERATOR_SUBRESOURCES_CERTFILE": str(cert),
        "VMSANDBOX_OPERATOR_SUBRESOURCES_KEYFILE": str(key),
    }


def registration(namespace: str, port: int, ca: Path) -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object): the Service and the APIService."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": namespace},
        "spec": {"clusterIP": "127.0.0.1", "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
    }
    api_service = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": API_SERVICE_NAME},
        "spec": {
            "group": SUBRESOURCE_GROUP,
            "version": SUBRESOURCE_VERSION,
            "service": {"namespace": namespace, "name": SERVICE_NAME, "port": port},
            "caBundle": base64.b64encode(ca.read_bytes()).decode(),
            "groupPriorityMinimum": 1000,
            "versionPriority": 15,
        },
    }
    return [
        (f"/api/v1/namespaces/{namespace}/services", service),
        ("/apis/apiregistration.k8s.io/v1/apiservices", api_service),
    ]


def register(send: Send, namespace: str, port: int, ca: Path) -> None:
    """Creates, or replaces, the Service and the APIService."""
    for collection, obj in registration(namespace, port, ca):
        resp = send("POST", collection, json=obj)
        if resp.status_code == 409:
            path = f"{collection}/{obj['metadata']['name']}"
            current = send("GET", path)
            if current.status_code == 200:
                obj["metadata"]["resourceVersion"] = current.json()["metadata"]["resourceVersion"]
                resp = send("PUT", path, json=obj)
        if resp.status_code not in (200, 201):
            raise RegistrationError(
                f"{obj['kind']} {obj['metadata']['name']}: {resp.status_code} {resp.text}"
            )
