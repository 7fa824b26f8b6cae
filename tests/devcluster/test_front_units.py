"""The front's pure parts: path parsing, verbs, body rewriting, strategic merge, discovery documents."""

from __future__ import annotations

import pytest

from vmsandbox.devcluster.apipath import parse_api_path
from vmsandbox.devcluster.corekinds import BY_PUBLIC, CORE_KINDS
from vmsandbox.devcluster.discovery import api_group_list, public_resource_list, version_priority
from vmsandbox.devcluster.strategic import StrategicPatchError, apply_strategic_merge
from vmsandbox.devcluster.translate import to_private, to_public

NODE = BY_PUBLIC[("", "v1", "nodes")]
LEASE = BY_PUBLIC[("coordination.k8s.io", "v1", "leases")]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/nodes", ("", "v1", "", "nodes", "", "")),
        ("/api/v1/nodes/n1/status", ("", "v1", "", "nodes", "n1", "status")),
        ("/api/v1/namespaces", ("", "v1", "", "namespaces", "", "")),
        ("/api/v1/namespaces/ns1", ("", "v1", "", "namespaces", "ns1", "")),
        ("/api/v1/namespaces/ns1/status", ("", "v1", "", "namespaces", "ns1", "status")),
        ("/api/v1/namespaces/ns1/events", ("", "v1", "ns1", "events", "", "")),
        ("/api/v1/namespaces/ns1/events/e1", ("", "v1", "ns1", "events", "e1", "")),
        (
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
            ("coordination.k8s.io", "v1", "kube-node-lease", "leases", "n1", ""),
        ),
        ("/apis/example.com/v1/widgets", ("example.com", "v1", "", "widgets", "", "")),
        ("/apis/example.com/v1", ("example.com", "v1", "", "", "", "")),
    ],
)
def test_parse_api_path(path: str, expected: tuple[str, ...]) -> None:
    api = parse_api_path(path)
    assert api is not None
    assert (api.group, api.version, api.namespace, api.resource, api.name, api.subresource) == expected
    assert api.render() == path


@pytest.mark.parametrize("path", ["/version", "/livez", "/apis", "/apis/example.com", "/openapi/v2"])
def test_non_resource_paths_are_not_parsed(path: str) -> None:
    assert parse_api_path(path) is None


@pytest.mark.parametrize(
    ("method", "path", "query", "verb"),
    [
        ("GET", "/api/v1/nodes", {}, "list"),
        ("GET", "/api/v1/nodes", {"watch": "true"}, "watch"),
        ("GET", "/api/v1/nodes", {"watch": "1"}, "watch"),
        ("GET", "/api/v1/nodes/n1", {}, "get"),
        ("POST", "/api/v1/nodes", {}, "create"),
        ("PUT", "/api/v1/nodes/n1", {}, "update"),
        ("PATCH", "/api/v1/nodes/n1/status", {}, "patch"),
        ("DELETE", "/api/v1/nodes/n1", {}, "delete"),
        ("DELETE", "/api/v1/namespaces/a/events", {}, "deletecollection"),
    ],
)
def test_verbs(method: str, path: str, query: dict[str, str], verb: str) -> None:
    api = parse_api_path(path)
    assert api is not None
    assert api.verb(method, query) == verb


def test_private_groups_are_distinct_and_hidden_from_the_group_list() -> None:
    privates = {(k.private_group, k.plural) for k in CORE_KINDS}
    assert len(privates) == len(CORE_KINDS)
    crds = {"items": [{"spec": k.crd()["spec"]} for k in CORE_KINDS]}
    crds["items"].append(
        {"spec": {"group": "example.com", "versions": [{"name": "v1alpha1", "served": True}, {"name": "v1"}]}}
    )
    groups = {g["name"]: g for g in api_group_list(crds)["groups"]}
    assert not any(name.endswith("devcluster.vmsandbox.io") for name in groups)
    assert {"apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io", "example.com"} <= set(groups)
    # Only served versions are listed.
    assert groups["example.com"]["preferredVersion"]["version"] == "v1alpha1"


def test_version_priority_matches_kubernetes_order() -> None:
    versions = ["v1alpha1", "foo", "v1beta1", "v2", "v1", "v1beta2", "v10alpha1"]
    assert sorted(versions, key=version_priority) == [
        "v2",
        "v1",
        "v1beta2",
        "v1beta1",
        "v10alpha1",
        "v1alpha1",
        "foo",
    ]


def test_public_resource_list_relabels_group_version() -> None:
    kinds = [k for k in CORE_KINDS if k.group == ""]
    private = {
        "groupVersion": "core.devcluster.vmsandbox.io/v1",
        "resources": [{"name": "nodes"}, {"name": "nodes/status"}, {"name": "other"}],
    }
    doc = public_resource_list(kinds, private)
    assert doc["groupVersion"] == "v1"
    assert [r["name"] for r in doc["resources"]] == ["nodes", "nodes/status"]


def test_to_private_rewrites_only_the_kind_it_maps() -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}
    assert to_private(NODE, node)["apiVersion"] == "core.devcluster.vmsandbox.io/v1"
    delete_options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    assert to_private(NODE, delete_options) == delete_options
    # Built-in endpoints take apiVersion/kind from the URL; CRD endpoints need them in the body.
    bare = {"metadata": {"name": "n"}}
    assert to_private(NODE, bare) == bare
    filled = to_private(NODE, bare, whole_object=True)
    assert (filled["apiVersion"], filled["kind"]) == (NODE.private_api_version, "Node")
    other = {"apiVersion": "v1", "kind": "Pod"}
    assert to_private(NODE, other, whole_object=True) == other
    assert to_private(NODE, [{"op": "add", "path": "/x", "value": 1}]) == [
        {"op": "add", "path": "/x", "value": 1}
    ]


def test_to_public_rewrites_lists_events_and_managed_fields() -> None:
    private = LEASE.private_api_version
    event = {
        "type": "ADDED",
        "object": {
            "apiVersion": private,
            "kind": "Lease",
            "metadata": {"managedFields": [{"apiVersion": private, "manager": "m"}]},
            "spec": {"holderIdentity": private},
        },
    }
    out = to_public(LEASE, event)
    assert out["object"]["apiVersion"] == "coordination.k8s.io/v1"
    assert out["object"]["metadata"]["managedFields"][0]["apiVersion"] == "coordination.k8s.io/v1"
    # User data that merely equals the private string is left alone (only apiVersion keys change).
    assert out["object"]["spec"]["holderIdentity"] == private


def test_to_public_names_resources_like_a_real_server_in_errors() -> None:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": 'nodes.core.devcluster.vmsandbox.io "n1" not found',
        "reason": "NotFound",
        "details": {"name": "n1", "group": "core.devcluster.vmsandbox.io", "kind": "nodes"},
        "code": 404,
    }
    out = to_public(NODE, status)
    assert out["message"] == 'nodes "n1" not found'
    assert "group" not in out["details"]
    conflict = {
        **status,
        "message": 'Operation cannot be fulfilled on leases.coordination.devcluster.vmsandbox.io "l"',
    }
    assert to_public(LEASE, conflict)["message"].endswith('leases.coordination.k8s.io "l"')


def test_strategic_merge_merges_conditions_by_type_and_finalizers_as_a_set() -> None:
    node = {
        "metadata": {"name": "n", "finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}],
            "capacity": {"cpu": "2"},
        },
    }
    patch = {
        "metadata": {"finalizers": ["b", "a"], "labels": {"y": None}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PIDPressure", "status": "False"}]
        },
    }
    merged = apply_strategic_merge(node, patch)
    assert merged["metadata"]["finalizers"] == ["a", "b"]
    assert merged["metadata"]["labels"] == {"x": "1"}
    assert merged["status"]["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "DiskPressure", "status": "False"},
        {"type": "PIDPressure", "status": "False"},
    ]
    assert merged["status"]["capacity"] == {"cpu": "2"}
    assert node["status"]["conditions"][0]["status"] == "False", "the original must not change"


def test_strategic_merge_directives() -> None:
    node = {"status": {"conditions": [{"type": "A"}, {"type": "B"}], "images": [{"names": ["x"]}]}}
    merged = apply_strategic_merge(node, {"status": {"conditions": [{"type": "A", "$patch": "delete"}]}})
    assert merged["status"]["conditions"] == [{"type": "B"}]
    # Lists without a merge key are replaced.
    merged = apply_strategic_merge(node, {"status": {"images": [{"names": ["y"]}]}})
    assert merged["status"]["images"] == [{"names": ["y"]}]
    merged = apply_strategic_merge(
        {"metadata": {"finalizers": ["a", "b"]}}, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}
    )
    assert merged["metadata"]["finalizers"] == ["b"]
    with pytest.raises(StrategicPatchError, match=r"status\.conditions"):
        apply_strategic_merge(node, {"status": {"conditions": [{"status": "True"}]}})
    with pytest.raises(StrategicPatchError):
        apply_strategic_merge(node, ["not", "a", "map"])
