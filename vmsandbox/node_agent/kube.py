"""The few Kubernetes API calls the agent makes, named for what they do, over :mod:`vmsandbox.kube`.

Objects stay plain dicts; the agent parses sandboxes with :func:`vmsandbox.api.parse_sandbox`
where it needs typed access. Every call raises :class:`vmsandbox.kube.ApiError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmsandbox.kube import Client, Connection
from vmsandbox.kube.paths import (
    events_path,
    lease_path,
    namespace_path,
    node_path,
    pool_path,
    sandbox_path,
)

JsonPatch = list[dict[str, Any]]
USER_AGENT = "vmsandbox-agent"


def make_client(kubeconfig: Path | None, pool_size: int = 32) -> Client:
    """From a kubeconfig file (option or ``KUBECONFIG``), else the in-cluster service account."""
    return Client(Connection.load(kubeconfig), user_agent=USER_AGENT, pool_size=pool_size)


def _items(listed: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    return list(listed.get("items") or []), str(listed["metadata"]["resourceVersion"])


class Kube:
    """Thread-safe (the client's connection pool is)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # ---- sandboxes -----------------------------------------------------------------------

    def list_sandboxes(self, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        return _items(self.client.list_objects(sandbox_path(), label_selector=label_selector))

    def watch_sandboxes(
        self, label_selector: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        return self.client.watch(
            sandbox_path(), resource_version, timeout_seconds, label_selector=label_selector
        )

    def get_sandbox(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.client.get_or_none(sandbox_path(namespace, name))

    def get_namespace(self, name: str) -> dict[str, Any] | None:
        return self.client.get_or_none(namespace_path(name))

    def replace_status(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT /status: the server refuses it (a conflict) when body's resourceVersion is stale."""
        return self.client.replace(sandbox_path(namespace, name, "status"), body)

    def patch_sandbox(self, namespace: str, name: str, patch: JsonPatch) -> dict[str, Any]:
        return self.client.json_patch(sandbox_path(namespace, name), patch)

    # ---- pools --------------------------------------------------------------------------

    def list_pools(self) -> tuple[list[dict[str, Any]], str]:
        """Every VMSandboxPool in every namespace (each node keeps its share of each)."""
        return _items(self.client.list_objects(pool_path()))

    def watch_pools(self, resource_version: str, timeout_seconds: int) -> Iterator[dict[str, Any]]:
        return self.client.watch(pool_path(), resource_version, timeout_seconds)

    def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.client.get_or_none(pool_path(namespace, name))

    # ---- events, leases, nodes -----------------------------------------------------------

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.client.create(events_path(namespace), body)

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.client.get_or_none(lease_path(namespace, name))

    def create_lease(self, namespace: str, body: dict[str, Any]) -> None:
        self.client.create(lease_path(namespace), body)

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.client.replace(lease_path(namespace, name), body)

    def patch_node(self, name: str, patch: dict[str, Any], timeout: float | None = None) -> None:
        self.client.merge_patch(node_path(name), patch, timeout=timeout)
