"""A real kopf operator runs against the front, and the request log says what it (and others) called."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client

from vmsandbox.devcluster import LocalCluster, RequestRecord

pytestmark = pytest.mark.kube

CRDS = Path(__file__).with_name("crds")
WIDGETS = "/apis/example.com/v1/namespaces/{ns}/widgets"


def _poll(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def _cluster_admin(kube: LocalCluster, user: str) -> Iterator[None]:
    """``user`` bound to cluster-admin for the duration (the front enforces RBAC)."""
    name = f"test-admin-{uuid.uuid4().hex[:8]}"
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": user}],
    }
    url = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    assert kube.http("POST", url, json=binding).status_code == 201
    try:
        yield
    finally:
        kube.http("DELETE", f"{url}/{name}")


def _run_operator(kube: LocalCluster, namespace: str, scenario: Callable[[], None]) -> None:
    """Runs a fresh-registry kopf operator in this loop while ``scenario`` runs in a worker thread."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=kube.url, token="system:serviceaccount:test:widget-operator")

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "example.com/widget-operator"
        settings.watching.server_timeout = 30

    @kopf.on.create("example.com", "v1", "widgets", registry=registry)
    def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Seen"
        kopf.info(body, reason="Seen", message="widget seen")

    @kopf.on.delete("example.com", "v1", "widgets", registry=registry)
    def deleted(**_: Any) -> None:
        return None

    async def main() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        operator = asyncio.create_task(
            kopf.operator(
                registry=registry, namespaces=[namespace], standalone=True, stop_flag=stop, ready_flag=ready
            )
        )
        try:
            await asyncio.wait_for(ready.wait(), 30)
            await asyncio.to_thread(scenario)
        finally:
            stop.set()
            await asyncio.wait_for(operator, 30)

    asyncio.run(main())


def test_kopf_operator_full_lifecycle(kube: LocalCluster, kube_namespace: str) -> None:
    kube.install_crds(CRDS)
    mark = len(kube.requests_made())
    url = WIDGETS.format(ns=kube_namespace)
    body = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "k1"},
        "spec": {"color": "red"},
    }

    def scenario() -> None:
        assert kube.http("POST", url, json=body).status_code == 201

        def handled() -> Any:
            obj = kube.http("GET", f"{url}/k1").json()
            return obj if obj.get("status", {}).get("phase") == "Seen" else None

        obj = _poll("the create handler", handled)
        assert "example.com/widget-operator" in obj["metadata"]["finalizers"]
        events = f"/api/v1/namespaces/{kube_namespace}/events?fieldSelector=involvedObject.name=k1"
        _poll(
            "kopf's event",
            lambda: any(
                "widget seen" in e.get("message", "") for e in kube.http("GET", events).json()["items"]
            ),
        )
        assert kube.http("DELETE", f"{url}/k1").status_code == 200
        _poll(
            "deletion after the finalizer is removed",
            lambda: kube.http("GET", f"{url}/k1").status_code == 404,
        )

    with _cluster_admin(kube, "system:serviceaccount:test:widget-operator"):
        _run_operator(kube, kube_namespace, scenario)

    calls = {
        (r.verb, r.group, r.resource, r.subresource)
        for r in kube.requests_made(since=mark)
        if r.user == "system:serviceaccount:test:widget-operator"
    }
    assert ("get", "", "", "") in calls, "discovery of /api"
    assert ("watch", "example.com", "widgets", "") in calls
    assert ("patch", "example.com", "widgets", "status") in calls
    assert ("create", "", "events", "") in calls
    kopf_agents = {r.user_agent for r in kube.requests_made(since=mark) if r.user.endswith("widget-operator")}
    assert all(agent.startswith("kopf/") for agent in kopf_agents), kopf_agents


def test_request_log_records_verb_resource_namespace_user_and_agent(
    kube: LocalCluster, kube_namespace: str
) -> None:
    user = "system:serviceaccount:vmsandbox-system:node-agent"
    mark = len(kube.requests_made())
    with _cluster_admin(kube, user), kube.api_client(user=user) as api_client:
        api_client.user_agent = "vmsandbox-node-agent/test"
        core = client.CoreV1Api(api_client)
        leases = client.CoordinationV1Api(api_client)
        core.list_node(label_selector="vmsandbox.io/test=none")
        leases.create_namespaced_lease(
            kube_namespace,
            {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "n1"}},
        )
        leases.patch_namespaced_lease(
            "n1",
            kube_namespace,
            {"spec": {"holderIdentity": "n1"}},
            _content_type="application/merge-patch+json",
        )
        with pytest.raises(client.ApiException):
            core.read_node_status("absent")
    records = [r for r in kube.requests_made(since=mark) if r.user == user]
    assert [(r.verb, r.group, r.resource, r.subresource, r.namespace, r.name, r.status) for r in records] == [
        ("list", "", "nodes", "", "", "", 200),
        ("create", "coordination.k8s.io", "leases", "", kube_namespace, "", 201),
        ("patch", "coordination.k8s.io", "leases", "", kube_namespace, "n1", 200),
        ("get", "", "nodes", "status", "", "absent", 404),
    ]
    assert {r.user_agent for r in records} == {"vmsandbox-node-agent/test"}
    assert all(isinstance(r, RequestRecord) and r.time > 0 for r in records)
