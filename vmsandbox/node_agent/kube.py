"""The few Kubernetes API calls the agent makes, on the synchronous ``kubernetes`` client.

Objects stay plain dicts (the custom-objects API returns them so); the agent parses sandboxes
with :func:`vmsandbox.api.parse_sandbox` where it needs typed access.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from vmsandbox.api.constants import GROUP, PLURAL, POOL_PLURAL, VERSION

JsonPatch = list[dict[str, Any]]


def make_api_client(kubeconfig: Path | None, pool_size: int = 32) -> client.ApiClient:
    """From a kubeconfig file (option or ``KUBECONFIG``), else the in-cluster service account."""
    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def status_code(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, ApiException) else None


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "").get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _dict(value: object) -> dict[str, Any]:
    """The custom-objects API is typed ``object``; it returns the decoded JSON object."""
    assert isinstance(value, dict)
    return value


class Kube:
    """Thread-safe (the underlying urllib3 pool is)."""

    def __init__(self, api_client: client.ApiClient, request_timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.timeout = request_timeout

    # ---- sandboxes -----------------------------------------------------------------------

    def list_sandboxes(self, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        return self._list(PLURAL, label_selector)

    def watch_sandboxes(
        self, label_selector: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        return self._watch(PLURAL, label_selector, resource_version, timeout_seconds)

    def _list(self, plural: str, label_selector: str = "") -> tuple[list[dict[str, Any]], str]:
        result = _dict(
            self.custom.list_cluster_custom_object(
                GROUP, VERSION, plural, label_selector=label_selector, _request_timeout=self.timeout
            )
        )
        return list(result.get("items", [])), str(result["metadata"]["resourceVersion"])

    def _watch(
        self, plural: str, label_selector: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        """Raw watch events (``type``, ``object``) until the server ends the stream."""
        response: Any = self.custom.list_cluster_custom_object(
            GROUP,
            VERSION,
            plural,
            label_selector=label_selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            watch=True,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            _request_timeout=(self.timeout, timeout_seconds + 30),
        )
        try:
            pending = b""
            for chunk in response.stream(65536, decode_content=True):
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)
        finally:
            response.release_conn()

    def get_sandbox(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = _dict(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self.timeout
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def get_namespace(self, name: str) -> dict[str, Any] | None:
        try:
            namespace = self.core.read_namespace(name, _request_timeout=self.timeout)
            obj = _dict(self.core.api_client.sanitize_for_serialization(namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def replace_status(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT /status: the server rejects it with 409 when body's resourceVersion is stale."""
        return _dict(
            self.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=self.timeout
            )
        )

    def patch_sandbox(self, namespace: str, name: str, patch: JsonPatch) -> dict[str, Any]:
        obj = self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            patch,
            _content_type="application/json-patch+json",
            _request_timeout=self.timeout,
        )
        return _dict(obj)

    # ---- pools --------------------------------------------------------------------------

    def list_pools(self) -> tuple[list[dict[str, Any]], str]:
        """Every VMSandboxPool in every namespace (each node keeps its share of each)."""
        return self._list(POOL_PLURAL)

    def watch_pools(self, resource_version: str, timeout_seconds: int) -> Iterator[dict[str, Any]]:
        return self._watch(POOL_PLURAL, "", resource_version, timeout_seconds)

    def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _dict(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, POOL_PLURAL, name, _request_timeout=self.timeout
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # ---- events, leases, nodes -----------------------------------------------------------

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        event = client.CoreV1Event.from_dict(body)
        assert event is not None
        self.core.create_namespaced_event(namespace, event, _request_timeout=self.timeout)

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease = self.coordination.read_namespaced_lease(name, namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(lease)
        return result

    def create_lease(self, namespace: str, body: dict[str, Any]) -> None:
        lease = client.V1Lease.from_dict(body)
        assert lease is not None
        self.coordination.create_namespaced_lease(namespace, lease, _request_timeout=self.timeout)

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        lease = client.V1Lease.from_dict(body)
        assert lease is not None
        self.coordination.replace_namespaced_lease(name, namespace, lease, _request_timeout=self.timeout)

    def patch_node(self, name: str, patch: dict[str, Any], timeout: float | None = None) -> None:
        self.core.patch_node(
            name,
            patch,
            _content_type="application/merge-patch+json",
            _request_timeout=timeout or self.timeout,
        )
