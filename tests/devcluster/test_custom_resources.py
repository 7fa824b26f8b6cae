"""A custom resource round trip through the front: the real server's CRD semantics reach clients intact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from vmsandbox.devcluster import LocalCluster

pytestmark = pytest.mark.kube

GROUP, VERSION, PLURAL = "example.com", "v1", "widgets"
CRDS = Path(__file__).with_name("crds")
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def widgets(kube: LocalCluster) -> Iterator[client.CustomObjectsApi]:
    kube.install_crds(CRDS)
    with kube.api_client() as api_client:
        yield client.CustomObjectsApi(api_client)


def _widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def _error(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def test_discovery_lists_the_crd_group(kube: LocalCluster, widgets: client.CustomObjectsApi) -> None:
    groups = {g["name"] for g in kube.http("GET", "/apis").json()["groups"]}
    assert GROUP in groups
    resources = kube.http("GET", f"/apis/{GROUP}/{VERSION}").json()["resources"]
    assert {r["name"] for r in resources} == {"widgets", "widgets/status"}


def test_round_trip_defaults_validates_and_separates_status(
    widgets: client.CustomObjectsApi, kube_namespace: str
) -> None:
    created = widgets.create_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, _widget("w1", color="red")
    )
    assert created["spec"] == {"color": "red", "size": 3}, "size is defaulted by the schema"
    assert created["metadata"]["generation"] == 1

    with pytest.raises(ApiException) as err:
        widgets.create_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, _widget("w2", color="red", size=11)
        )
    assert err.value.status == 422
    assert [c["field"] for c in _error(err.value)["details"]["causes"]] == ["spec.size"]

    with pytest.raises(ApiException) as err:
        widgets.patch_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, "w1", {"spec": {"color": "blue"}}
        )
    assert err.value.status == 422
    assert "color is immutable" in _error(err.value)["message"]

    widgets.patch_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, PLURAL, "w1", {"status": {"phase": "Ready"}, "spec": {"size": 9}}
    )
    current = widgets.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "w1")
    assert current["status"] == {"phase": "Ready"}
    assert current["spec"]["size"] == 3, "a /status write ignores spec"
    assert current["metadata"]["generation"] == 1

    widgets.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, "w1", {"spec": {"size": 5}}
    )
    current = widgets.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "w1")
    assert current["metadata"]["generation"] == 2
    assert current["status"] == {"phase": "Ready"}

    widgets.delete_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "w1")
    with pytest.raises(ApiException) as err:
        widgets.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "w1")
    assert err.value.status == 404


def test_finalizer_holds_deletion(widgets: client.CustomObjectsApi, kube_namespace: str) -> None:
    body = _widget("held", color="green")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    widgets.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, body)
    widgets.delete_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "held")
    held = widgets.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "held")
    assert held["metadata"]["deletionTimestamp"]
    widgets.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, "held", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as err:
        widgets.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "held")
    assert err.value.status == 404


def test_selectable_field_watch_and_table(
    kube: LocalCluster, widgets: client.CustomObjectsApi, kube_namespace: str
) -> None:
    start = widgets.list_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL)["metadata"][
        "resourceVersion"
    ]
    for name, color in [("r", "red"), ("g", "green"), ("b", "blue")]:
        widgets.create_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, _widget(name, color=color)
        )
    green = widgets.list_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, field_selector="spec.color=green"
    )
    assert [w["metadata"]["name"] for w in green["items"]] == ["g"]

    seen = []
    stream = watch.Watch()
    for event in stream.stream(
        widgets.list_namespaced_custom_object,
        GROUP,
        VERSION,
        kube_namespace,
        PLURAL,
        resource_version=start,
        field_selector="spec.color!=green",
        timeout_seconds=10,
    ):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if len(seen) == 2:
            stream.stop()
    assert seen == [("ADDED", "r"), ("ADDED", "b")]

    table = kube.http(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{kube_namespace}/{PLURAL}",
        headers={"Accept": "application/json;as=Table;g=meta.k8s.io;v=v1"},
    ).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Color", "Phase"]
    assert sorted(row["cells"][:2] for row in table["rows"]) == [["b", "blue"], ["g", "green"], ["r", "red"]]


def test_namespace_deletion_deletes_custom_resources(
    kube: LocalCluster, widgets: client.CustomObjectsApi
) -> None:
    namespace = "widgets-doomed"
    assert kube.http("POST", "/api/v1/namespaces", json={"metadata": {"name": namespace}}).status_code == 201
    widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _widget("free", color="red"))
    held = _widget("held", color="blue")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, held)
    assert kube.http("DELETE", f"/api/v1/namespaces/{namespace}").status_code == 200
    left = widgets.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    assert [(w["metadata"]["name"], bool(w["metadata"].get("deletionTimestamp"))) for w in left] == [
        ("held", True)
    ]
    widgets.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "held", {"metadata": {"finalizers": None}}
    )
    assert widgets.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []
