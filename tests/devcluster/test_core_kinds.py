"""Nodes, Leases, Events and Namespaces through the front, with the ``kubernetes`` client.

They are stored as look-alike CRDs in the real server, so resourceVersions, conflicts,
selectors, watches and the status subresource are the real server's behaviour.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from vmsandbox.devcluster import LocalCluster

pytestmark = pytest.mark.kube

MERGE = "application/merge-patch+json"
SMP = "application/strategic-merge-patch+json"


@pytest.fixture
def core(kube: LocalCluster) -> Iterator[client.CoreV1Api]:
    with kube.api_client() as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def node_name(core: client.CoreV1Api) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        core.delete_node(name)
    except ApiException as exc:
        assert exc.status == 404


def _message(exc: ApiException) -> str:
    return str(json.loads(exc.body)["message"])


def _node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": False},
        "status": {
            "capacity": {"cpu": "2", "memory": "4Gi"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }


def test_node_create_keeps_status_and_gets_server_metadata(core: client.CoreV1Api, node_name: str) -> None:
    created = core.create_node(_node(node_name, role="worker"))
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    assert created.status.capacity == {"cpu": "2", "memory": "4Gi"}
    fetched = core.read_node(node_name)
    assert fetched.metadata.labels == {"role": "worker"}
    assert [c.type for c in fetched.status.conditions] == ["Ready"]


def test_node_status_subresource_separates_spec_and_status(core: client.CoreV1Api, node_name: str) -> None:
    core.create_node(_node(node_name))
    # A main-endpoint write ignores status...
    core.patch_node(node_name, {"status": {"capacity": {"cpu": "64"}}}, _content_type=MERGE)
    assert core.read_node(node_name).status.capacity["cpu"] == "2"
    # ...and a /status write ignores everything else.
    core.patch_node_status(
        node_name,
        {"metadata": {"labels": {"x": "y"}}, "status": {"capacity": {"cpu": "8"}}},
        _content_type=MERGE,
    )
    node = core.read_node(node_name)
    assert node.status.capacity["cpu"] == "8"
    assert not (node.metadata.labels or {}).get("x")


def test_node_strategic_merge_patch_merges_conditions_by_type(core: client.CoreV1Api, node_name: str) -> None:
    core.create_node(_node(node_name))
    patch = {"status": {"conditions": [{"type": "MemoryPressure", "status": "False"}]}}
    core.patch_node_status(node_name, patch, _content_type=SMP)
    conditions = {c.type: c.status for c in core.read_node(node_name).status.conditions}
    assert conditions == {"Ready": "True", "MemoryPressure": "False"}
    core.patch_node(node_name, {"metadata": {"labels": {"zone": "a"}}}, _content_type=SMP)
    assert core.read_node(node_name).metadata.labels == {"zone": "a"}


def test_node_update_with_stale_resource_version_conflicts(core: client.CoreV1Api, node_name: str) -> None:
    created = core.create_node(_node(node_name))
    stale = created.metadata.resource_version
    core.patch_node(node_name, {"metadata": {"labels": {"v": "2"}}}, _content_type=MERGE)
    body = _node(node_name, v="3")
    body["metadata"]["resourceVersion"] = stale
    with pytest.raises(ApiException) as err:
        core.replace_node(node_name, body)
    assert err.value.status == 409
    assert f'nodes "{node_name}"' in _message(err.value)
    # A strategic merge patch pinned to the stale version conflicts too.
    with pytest.raises(ApiException) as err:
        core.patch_node(
            node_name, {"metadata": {"resourceVersion": stale, "labels": {"v": "4"}}}, _content_type=SMP
        )
    assert err.value.status == 409
    assert core.read_node(node_name).metadata.labels == {"v": "2"}


def test_node_label_and_field_selectors(core: client.CoreV1Api) -> None:
    run = uuid.uuid4().hex[:6]
    names = [f"sel-{run}-{i}" for i in range(3)]
    try:
        for i, name in enumerate(names):
            body = _node(name, run=run, pool="gpu" if i == 0 else "cpu")
            body["spec"]["unschedulable"] = i == 2
            core.create_node(body)
        gpu = core.list_node(label_selector=f"run={run},pool=gpu").items
        assert [n.metadata.name for n in gpu] == [names[0]]
        cordoned = core.list_node(label_selector=f"run={run}", field_selector="spec.unschedulable=true").items
        assert [n.metadata.name for n in cordoned] == [names[2]]
        by_name = core.list_node(field_selector=f"metadata.name={names[1]}").items
        assert [n.metadata.name for n in by_name] == [names[1]]
    finally:
        for name in names:
            core.delete_node(name)


def test_node_watch_streams_public_events(core: client.CoreV1Api, node_name: str) -> None:
    start = core.list_node().metadata.resource_version
    # Without status: a Node created with status shows up as ADDED then MODIFIED (README).
    body = _node(node_name)
    del body["status"]
    core.create_node(body)
    core.patch_node(node_name, {"metadata": {"labels": {"seen": "yes"}}}, _content_type=MERGE)
    core.delete_node(node_name)
    events = []
    stream = watch.Watch()
    for event in stream.stream(core.list_node, resource_version=start, timeout_seconds=10):
        if event["raw_object"]["metadata"]["name"] != node_name:
            continue
        events.append((event["type"], event["raw_object"]["apiVersion"], event["raw_object"]["kind"]))
        if event["type"] == "DELETED":
            stream.stop()
    assert events == [("ADDED", "v1", "Node"), ("MODIFIED", "v1", "Node"), ("DELETED", "v1", "Node")]


def test_watch_from_a_compacted_version_is_gone(kube: LocalCluster) -> None:
    resp = kube.http("GET", "/api/v1/nodes?watch=true&resourceVersion=1&timeoutSeconds=5", stream=True)
    with resp:
        first = next(resp.iter_lines())
    assert b'"ERROR"' in first and b"410" in first


def test_missing_node_is_reported_with_the_public_resource_name(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.read_node("no-such-node")
    assert err.value.status == 404
    assert _message(err.value) == 'nodes "no-such-node" not found'
    assert "devcluster" not in err.value.body


def test_unemulated_core_resources_are_not_found(kube: LocalCluster) -> None:
    assert kube.http("GET", "/api/v1/pods").status_code == 404
    assert kube.http("GET", "/api/v1/namespaces/default/secrets").status_code == 404


def test_lease_crud_conflict_and_selector(kube: LocalCluster, kube_namespace: str) -> None:
    with kube.api_client() as api_client:
        leases = client.CoordinationV1Api(api_client)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "leader", "labels": {"app": "operator"}},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        }
        created = leases.create_namespaced_lease(kube_namespace, body)
        assert created.api_version == "coordination.k8s.io/v1"
        assert created.spec.holder_identity == "a"
        with pytest.raises(ApiException) as err:
            leases.create_namespaced_lease(kube_namespace, body)
        assert err.value.status == 409
        # Two candidates race on the same resourceVersion: exactly one wins.
        mine = leases.read_namespaced_lease("leader", kube_namespace)
        theirs = leases.read_namespaced_lease("leader", kube_namespace)
        mine.spec.holder_identity = "b"
        leases.replace_namespaced_lease("leader", kube_namespace, mine)
        theirs.spec.holder_identity = "c"
        with pytest.raises(ApiException) as err:
            leases.replace_namespaced_lease("leader", kube_namespace, theirs)
        assert err.value.status == 409
        assert 'leases.coordination.k8s.io "leader"' in _message(err.value)
        assert leases.read_namespaced_lease("leader", kube_namespace).spec.holder_identity == "b"
        assert [
            x.metadata.name
            for x in leases.list_namespaced_lease(kube_namespace, label_selector="app=operator").items
        ] == ["leader"]
        assert leases.list_namespaced_lease(kube_namespace, label_selector="app=agent").items == []
        leases.delete_namespaced_lease("leader", kube_namespace)
        assert leases.list_namespaced_lease(kube_namespace).items == []


def test_core_events_with_involved_object_field_selector(core: client.CoreV1Api, kube_namespace: str) -> None:
    for i, target in enumerate(["sb-a", "sb-b"]):
        core.create_namespaced_event(
            kube_namespace,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"ev-{i}"},
                "involvedObject": {"kind": "VMSandbox", "name": target, "namespace": kube_namespace},
                "reason": "Scheduled",
                "message": f"scheduled {target}",
                "type": "Normal",
            },
        )
    selected = core.list_namespaced_event(kube_namespace, field_selector="involvedObject.name=sb-b").items
    assert [(e.metadata.name, e.message) for e in selected] == [("ev-1", "scheduled sb-b")]
    everywhere = core.list_event_for_all_namespaces(
        field_selector=f"involvedObject.namespace={kube_namespace}"
    )
    assert len(everywhere.items) == 2
    assert everywhere.items[0].involved_object.kind == "VMSandbox"


def test_events_k8s_io_events(kube: LocalCluster, kube_namespace: str) -> None:
    with kube.api_client() as api_client:
        events = client.EventsV1Api(api_client)
        created = events.create_namespaced_event(
            kube_namespace,
            {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"name": "booted"},
                "eventTime": "2026-01-01T00:00:00.000000Z",
                "reportingController": "vmsandbox.io/node-agent",
                "reportingInstance": "node-1",
                "action": "Boot",
                "reason": "VMReady",
                "regarding": {"kind": "VMSandbox", "name": "sb-1", "namespace": kube_namespace},
                "type": "Normal",
            },
        )
        assert created.api_version == "events.k8s.io/v1"
        found = events.list_namespaced_event(kube_namespace, field_selector="regarding.name=sb-1").items
        assert [e.reason for e in found] == ["VMReady"]
        assert events.list_namespaced_event(kube_namespace, field_selector="regarding.name=other").items == []


def test_namespace_lifecycle(core: client.CoreV1Api) -> None:
    name = f"ns-{uuid.uuid4().hex[:8]}"
    created = core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert created.status.phase == "Active"
    assert created.api_version == "v1"
    assert core.read_namespace(name).metadata.name == name
    core.delete_namespace(name)
    with pytest.raises(ApiException) as err:
        core.read_namespace(name)
    assert err.value.status == 404


def test_table_responses_for_core_kinds(kube: LocalCluster, core: client.CoreV1Api, node_name: str) -> None:
    core.create_node(_node(node_name))
    resp = kube.http(
        "GET",
        f"/api/v1/nodes/{node_name}",
        headers={"Accept": "application/json;as=Table;g=meta.k8s.io;v=v1"},
    )
    assert resp.status_code == 200
    table = resp.json()
    assert table["kind"] == "Table"
    assert table["rows"][0]["cells"][0] == node_name
    assert "devcluster" not in resp.text


def test_server_side_apply_on_a_core_kind(kube: LocalCluster, node_name: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name, "labels": {"a": "1"}}}
    resp = kube.http(
        "PATCH",
        f"/api/v1/nodes/{node_name}?fieldManager=tester",
        json=manifest,
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert resp.status_code == 201, resp.text
    node = resp.json()
    assert node["apiVersion"] == "v1"
    assert [(m["manager"], m["apiVersion"]) for m in node["metadata"]["managedFields"]] == [("tester", "v1")]


def test_discovery_serves_what_kopf_and_kubectl_need(kube: LocalCluster) -> None:
    assert kube.http("GET", "/api").json()["versions"] == ["v1"]
    core = {r["name"]: r for r in kube.http("GET", "/api/v1").json()["resources"]}
    assert {"namespaces", "nodes", "nodes/status", "events", "namespaces/status"} <= set(core)
    assert {"list", "watch", "get", "create"} <= set(core["namespaces"]["verbs"])
    assert core["nodes"]["namespaced"] is False and core["events"]["namespaced"] is True
    assert core["namespaces"]["singularName"] == "namespace"
    groups = {g["name"]: g for g in kube.http("GET", "/apis").json()["groups"]}
    assert {"apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io"} <= set(groups)
    assert not [g for g in groups if "devcluster" in g]
    group = kube.http("GET", "/apis/coordination.k8s.io").json()
    assert (group["kind"], group["preferredVersion"]["groupVersion"]) == (
        "APIGroup",
        "coordination.k8s.io/v1",
    )
    leases = kube.http("GET", "/apis/coordination.k8s.io/v1").json()
    assert [r["name"] for r in leases["resources"]] == ["leases"]
    assert leases["groupVersion"] == "coordination.k8s.io/v1"
    crds = kube.http("GET", "/apis/apiextensions.k8s.io/v1").json()
    assert "customresourcedefinitions" in {r["name"] for r in crds["resources"]}
    openapi_root = kube.http("GET", "/openapi/v3").json()["paths"]
    assert {"api/v1", "apis/coordination.k8s.io/v1", "apis/events.k8s.io/v1"} <= set(openapi_root)
    assert not [p for p in openapi_root if "devcluster" in p]


def test_objects_in_a_missing_namespace_are_accepted(core: client.CoreV1Api) -> None:
    """No namespace lifecycle (README): the real server runs without the NamespaceLifecycle plugin."""
    event = {"metadata": {"name": "orphan"}, "involvedObject": {"kind": "Node", "name": "n"}, "reason": "R"}
    created = core.create_namespaced_event("no-such-namespace", event)
    assert (created.api_version, created.kind) == ("v1", "Event")
    core.delete_namespaced_event("orphan", "no-such-namespace")


def test_yaml_responses_for_core_kinds_are_translated(kube: LocalCluster) -> None:
    resp = kube.http("GET", "/api/v1/namespaces/default", headers={"Accept": "application/yaml"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/yaml")
    assert "apiVersion: v1\n" in resp.text
    assert "devcluster" not in resp.text


def test_delete_preconditions_are_enforced(core: client.CoreV1Api, node_name: str) -> None:
    created = core.create_node(_node(node_name))
    core.patch_node(node_name, {"metadata": {"labels": {"v": "2"}}}, _content_type=MERGE)
    stale = {"preconditions": {"resourceVersion": created.metadata.resource_version}}
    with pytest.raises(ApiException) as err:
        core.delete_node(node_name, body=stale)
    assert err.value.status == 409
    current = core.read_node(node_name).metadata.resource_version
    core.delete_node(node_name, body={"preconditions": {"resourceVersion": current}})
    with pytest.raises(ApiException) as err:
        core.read_node(node_name)
    assert err.value.status == 404


def test_deleting_a_namespace_deletes_its_objects(kube: LocalCluster, core: client.CoreV1Api) -> None:
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    with kube.api_client() as api_client:
        leases = client.CoordinationV1Api(api_client)
        leases.create_namespaced_lease(name, {"metadata": {"name": "l1"}})
        leases.create_namespaced_lease("default", {"metadata": {"name": f"keep-{name}"}})
        core.create_namespaced_event(name, {"metadata": {"name": "e1"}, "involvedObject": {"name": "x"}})
        core.delete_namespace(name)
        assert leases.list_namespaced_lease(name).items == []
        assert core.list_namespaced_event(name).items == []
        leases.read_namespaced_lease(f"keep-{name}", "default")  # other namespaces are untouched
        leases.delete_namespaced_lease(f"keep-{name}", "default")
