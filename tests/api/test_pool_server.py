"""The generated VMSandboxPool CRD against a real Kubernetes API server (vmsandbox.devcluster):
defaults, bounds refused with the field named, the scale subresource, immutability and columns.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.api.cases import POOL_INVALID, pool, sandbox
from tests.api.server import assert_refused, create, table
from tests.chart.helm import find_tool, missing
from vmsandbox.api.constants import GROUP, PLURAL, POOL_PLURAL, VERSION

pytestmark = pytest.mark.kube


def test_empty_pool_is_defaulted(api: client.CustomObjectsApi, kube_namespace: str) -> None:
    created = create(api, kube_namespace, POOL_PLURAL, pool("defaults"))
    assert created["spec"] == {
        "replicas": 1,
        "paused": False,
        "mode": "booted",
        "template": {"resources": {"vcpus": 1, "memoryMiB": 512}},
    }


@pytest.mark.parametrize(("case", "obj", "field"), POOL_INVALID, ids=[c[0] for c in POOL_INVALID])
def test_server_rejects_with_the_field_named(
    api: client.CustomObjectsApi, kube_namespace: str, case: str, obj: dict[str, Any], field: str
) -> None:
    assert_refused(api, kube_namespace, POOL_PLURAL, case, obj, field)


def test_scale_subresource_reads_and_writes_replicas(
    kube: Any, api: client.CustomObjectsApi, kube_namespace: str
) -> None:
    create(api, kube_namespace, POOL_PLURAL, pool("sc", replicas=2))
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        kube_namespace,
        POOL_PLURAL,
        "sc",
        {"status": {"replicas": 1, "selector": "vmsandbox.io/pool=sc"}},
    )
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{kube_namespace}/{POOL_PLURAL}/sc/scale"
    got = kube.http("GET", path)
    assert got.status_code == 200, got.text
    scale = got.json()
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"] == {"replicas": 1, "selector": "vmsandbox.io/pool=sc"}
    # kubectl scale: a merge patch of the Scale's spec.replicas.
    patched = kube.http(
        "PATCH",
        path,
        data=json.dumps({"spec": {"replicas": 5}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    assert (
        api.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, POOL_PLURAL, "sc")["spec"][
            "replicas"
        ]
        == 5
    )
    # PUT of the whole Scale, as an autoscaler writes it.
    body = kube.http("GET", path).json()
    body["spec"]["replicas"] = 0
    put = kube.http("PUT", path, json=body)
    assert put.status_code == 200, put.text
    assert put.json()["spec"].get("replicas", 0) == 0, "a Scale omits zero replicas"
    stored = api.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, POOL_PLURAL, "sc")
    assert stored["spec"]["replicas"] == 0
    # The scale subresource enforces the spec's bounds too.
    body = kube.http("GET", path).json()
    body["spec"]["replicas"] = 65
    refused = kube.http("PUT", path, json=body)
    assert refused.status_code == 422, refused.text
    assert "spec.replicas" in refused.text


def test_mode_and_template_are_immutable_replicas_is_not(
    api: client.CustomObjectsApi, kube_namespace: str
) -> None:
    template = {"resources": {"vcpus": 1, "memoryMiB": 256}}
    create(api, kube_namespace, POOL_PLURAL, pool("imm", template=template))
    for change, field in (
        ({"mode": "snapshot"}, "mode"),
        ({"template": {"resources": {"vcpus": 2, "memoryMiB": 256}}}, "template"),
        ({"template": {"nodeSelector": {"zone": "a"}}}, "template"),
    ):
        with pytest.raises(ApiException) as err:
            api.patch_namespaced_custom_object(
                GROUP, VERSION, kube_namespace, POOL_PLURAL, "imm", {"spec": change}
            )
        assert err.value.status == 422
        assert f"{field} is immutable" in err.value.body
    scaled = api.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, POOL_PLURAL, "imm", {"spec": {"replicas": 3}}
    )
    assert scaled["spec"]["replicas"] == 3


def test_status_is_validated_and_written_through_the_subresource(
    api: client.CustomObjectsApi, kube_namespace: str
) -> None:
    create(api, kube_namespace, POOL_PLURAL, pool("st"))
    status = {
        "replicas": 1,
        "readyReplicas": 1,
        "observedGeneration": 1,
        "nodes": [{"name": "n1", "desired": 1, "ready": 1}],
    }
    written = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, POOL_PLURAL, "st", {"status": status}
    )
    assert written["status"] == status
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            kube_namespace,
            POOL_PLURAL,
            "st",
            {"status": {"nodes": [{"name": "n1", "desired": -1}]}},
        )
    assert err.value.status == 422
    assert "status.nodes[0].desired" in err.value.body


def test_printer_columns(kube: Any, api: client.CustomObjectsApi, kube_namespace: str) -> None:
    create(api, kube_namespace, POOL_PLURAL, pool("tbl", replicas=3, mode="snapshot"))
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, POOL_PLURAL, "tbl", {"status": {"readyReplicas": 2}}
    )
    shown = table(kube, kube_namespace, POOL_PLURAL)
    assert [c["name"] for c in shown["columnDefinitions"]] == ["Name", "Mode", "Replicas", "Ready", "Age"]
    row = next(r for r in shown["rows"] if r["cells"][0] == "tbl")
    assert row["cells"][1:4] == ["snapshot", 3, 2]


def test_sandbox_pool_is_validated_and_immutable(api: client.CustomObjectsApi, kube_namespace: str) -> None:
    created = api.create_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, sandbox("claim", pool="small")
    )
    assert created["spec"]["pool"] == "small"
    for change in ({"pool": "other"}, {"pool": None}):
        with pytest.raises(ApiException) as err:
            api.patch_namespaced_custom_object(
                GROUP, VERSION, kube_namespace, PLURAL, "claim", {"spec": change}
            )
        assert err.value.status == 422
        assert "pool is immutable" in err.value.body
    api.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, sandbox("cold"))
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, "cold", {"spec": {"pool": "small"}}
        )
    assert err.value.status == 422
    assert "pool is immutable" in err.value.body


def _kubectl(kube: Any, *args: str) -> subprocess.CompletedProcess[str]:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        missing("kubectl is not installed")
    return subprocess.run(
        [str(kubectl), f"--kubeconfig={kube.kubeconfig_path}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_kubectl_scale_and_get_by_short_name(
    kube: Any, api: client.CustomObjectsApi, kube_namespace: str
) -> None:
    create(api, kube_namespace, POOL_PLURAL, pool("kc", replicas=1))
    scaled = _kubectl(kube, "-n", kube_namespace, "scale", "vmsbp/kc", "--replicas=4")
    assert scaled.returncode == 0, scaled.stderr
    stored = api.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, POOL_PLURAL, "kc")
    assert stored["spec"]["replicas"] == 4
    refused = _kubectl(kube, "-n", kube_namespace, "scale", "vmsbp/kc", "--replicas=99")
    assert refused.returncode != 0 and "spec.replicas" in refused.stderr
    table = _kubectl(kube, "-n", kube_namespace, "get", "vmsbp")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "MODE", "REPLICAS", "READY", "AGE"]
    assert row.split()[:3] == ["kc", "booted", "4"]
