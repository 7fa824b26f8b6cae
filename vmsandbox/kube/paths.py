"""Resource paths of the API server, built in one place (names are quoted, never trusted)."""

from __future__ import annotations

from urllib.parse import quote

from vmsandbox.api.constants import (
    GROUP,
    PLURAL,
    POOL_PLURAL,
    SUBRESOURCE_GROUP,
    SUBRESOURCE_VERSION,
    VERSION,
)


def _named(path: str, name: str | None, sub: str | None = None) -> str:
    if name is not None:
        path += f"/{quote(name, safe='')}"
    if sub is not None:
        path += f"/{sub}"
    return path


def _custom(plural: str, namespace: str | None, name: str | None, sub: str | None) -> str:
    path = f"/apis/{GROUP}/{VERSION}"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    return _named(f"{path}/{plural}", name, sub)


def sandbox_path(namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    """VMSandboxes of every namespace, of one, or one sandbox (``sub``: ``status``)."""
    return _custom(PLURAL, namespace, name, sub)


def pool_path(namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    return _custom(POOL_PLURAL, namespace, name, sub)


def subresource_group_path() -> str:
    """The aggregated group's discovery document: served only where the API server routes it."""
    return f"/apis/{SUBRESOURCE_GROUP}/{SUBRESOURCE_VERSION}"


def subresource_path(namespace: str, name: str, sub: str) -> str:
    """A sandbox's aggregated subresource (``exec``, ``log``, ``files``...) under the API server."""
    where = f"namespaces/{quote(namespace, safe='')}/{PLURAL}/{quote(name, safe='')}/{sub}"
    return f"{subresource_group_path()}/{where}"


def lease_path(namespace: str, name: str | None = None) -> str:
    return _named(f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases", name)


def node_path(name: str | None = None) -> str:
    return _named("/api/v1/nodes", name)


def namespace_path(name: str | None = None) -> str:
    return _named("/api/v1/namespaces", name)


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/events"


def token_review_path() -> str:
    return "/apis/authentication.k8s.io/v1/tokenreviews"


def access_review_path() -> str:
    return "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def configmap_path(namespace: str, name: str) -> str:
    return _named(f"/api/v1/namespaces/{quote(namespace, safe='')}/configmaps", name)
