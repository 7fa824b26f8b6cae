"""The generated CRD against a real Kubernetes API server (vmsandbox.devcluster).

Each rule the model enforces is also enforced by the server (HTTP 422 naming the field), and
what only the server can do — defaulting, immutability by CEL, the status subresource, printer
columns — is checked end to end.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.api.cases import INVALID, sandbox
from tests.api.server import assert_refused, create, table
from vmsandbox.api import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.kube


def test_valid_sandbox_is_created_and_defaulted(api: client.CustomObjectsApi, kube_namespace: str) -> None:
    created = create(api, kube_namespace, PLURAL, sandbox("defaults"))
    spec = created["spec"]
    assert spec["imagePullPolicy"] == "IfNotPresent"
    assert spec["restartPolicy"] == "Never"
    assert spec["resources"] == {"vcpus": 1, "memoryMiB": 512}
    assert "hypervisor" not in spec
    assert created["metadata"]["generation"] == 1


def test_unknown_fields_are_pruned(api: client.CustomObjectsApi, kube_namespace: str) -> None:
    obj = sandbox("pruned", color="blue")
    created = create(api, kube_namespace, PLURAL, obj)
    assert "color" not in created["spec"]


@pytest.mark.parametrize(("case", "obj", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_server_rejects_with_the_field_named(
    api: client.CustomObjectsApi, kube_namespace: str, case: str, obj: dict[str, Any], field: str
) -> None:
    assert_refused(api, kube_namespace, PLURAL, case, obj, field)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image": "registry.local:5000/tools/busybox:1.37"}, "image"),
        ({"resources": {"vcpus": 2, "memoryMiB": 512}}, "resources"),
        ({"network": {"mode": "open"}}, "network"),
    ],
)
def test_immutable_fields_refuse_updates(
    api: client.CustomObjectsApi, kube_namespace: str, change: dict[str, Any], field: str
) -> None:
    name = f"immutable-{field}"
    create(api, kube_namespace, PLURAL, sandbox(name))
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, name, {"spec": change})
    assert err.value.status == 422
    assert f"{field} is immutable" in err.value.body


def test_hypervisor_is_immutable_once_set(api: client.CustomObjectsApi, kube_namespace: str) -> None:
    create(api, kube_namespace, PLURAL, sandbox("hv"))
    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, "hv", {"spec": {"hypervisor": "qemu"}}
    )
    assert patched["spec"]["hypervisor"] == "qemu", "setting it the first time is allowed"
    for change in ({"hypervisor": "process"}, {"hypervisor": None}):
        with pytest.raises(ApiException) as err:
            api.patch_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "hv", {"spec": change})
        assert err.value.status == 422
        assert "hypervisor is immutable" in err.value.body
    mutable = api.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, "hv", {"spec": {"ttlSecondsAfterFinished": 5}}
    )
    assert mutable["spec"]["ttlSecondsAfterFinished"] == 5
    assert mutable["metadata"]["generation"] == 3


def test_status_is_written_through_the_subresource_only(
    api: client.CustomObjectsApi, kube_namespace: str
) -> None:
    create(api, kube_namespace, PLURAL, sandbox("st"))
    main = api.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, "st", {"status": {"phase": "Running"}}
    )
    assert "phase" not in main.get("status", {}), "the main endpoint must ignore status"
    status = api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        kube_namespace,
        PLURAL,
        "st",
        {"spec": {"restartPolicy": "Always"}, "status": {"phase": "Scheduled", "nodeName": "n1"}},
    )
    assert status["status"] == {"phase": "Scheduled", "nodeName": "n1"}
    assert status["spec"]["restartPolicy"] == "Never", "the status endpoint must ignore spec"
    assert status["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, kube_namespace, PLURAL, "st", {"status": {"phase": "Exploded"}}
        )
    assert err.value.status == 422
    assert "status.phase" in err.value.body


def test_printer_columns_in_a_table_request(
    kube: Any, kube_namespace: str, api: client.CustomObjectsApi
) -> None:
    create(api, kube_namespace, PLURAL, sandbox("tbl"))
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        kube_namespace,
        PLURAL,
        "tbl",
        {"status": {"phase": "Running", "nodeName": "n1", "hypervisor": "qemu", "restartCount": 2}},
    )
    shown = table(kube, kube_namespace, PLURAL)
    assert shown["kind"] == "Table"
    names = [c["name"] for c in shown["columnDefinitions"]]
    assert names == ["Name", "Phase", "Node", "Hypervisor", "Restarts", "Age", "Reason"]
    assert [c["priority"] for c in shown["columnDefinitions"]][-1] == 1
    row = next(r for r in shown["rows"] if r["cells"][0] == "tbl")
    assert row["cells"][1:5] == ["Running", "n1", "qemu", 2]


def test_selectable_fields_filter_on_the_server(api: client.CustomObjectsApi, kube_namespace: str) -> None:
    for name, node in (("sel-a", "node-a"), ("sel-b", "node-b")):
        create(api, kube_namespace, PLURAL, sandbox(name))
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, kube_namespace, PLURAL, name, {"status": {"nodeName": node, "phase": "Scheduled"}}
        )
    listed = api.list_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, field_selector="status.nodeName=node-b"
    )
    assert [i["metadata"]["name"] for i in listed["items"]] == ["sel-b"]
