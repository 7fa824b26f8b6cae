"""``kubectl explain`` describes the VMSandbox kind and every field below it, against the local
control plane (the real API server holding the generated CRD, its OpenAPI v3 published by the front).

kubectl is the real binary from ``hack/install-helm.sh``; where it is missing the tests skip,
and fail instead with ``VMSANDBOX_REQUIRE_TOOLS=1`` (as CI sets it).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import find_tool, missing
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.openapi import TYPE_META

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "vmsandboxes.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _fields(node: dict[str, Any], path: str) -> list[tuple[str, str]]:
    """(kubectl explain path, description) of every field below ``node``; list items are stepped into."""
    out: list[tuple[str, str]] = []
    for name, prop in node.get("properties", {}).items():
        where = f"{path}.{name}"
        out.append((where, prop.get("description", "")))
        out += _fields(prop, where)
        out += _fields(prop.get("items") or {}, where)
    return out


FIELDS = [(p, d) for p, d in _fields(_schema(), "vmsb") if p.split(".")[1] in ("spec", "status")]


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def explain(kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        missing("kubectl is not installed")
    cache = tmp_path_factory.mktemp("kubectl-cache")

    def run(path: str) -> str:
        result = subprocess.run(
            [str(kubectl), f"--kubeconfig={kube.kubeconfig_path}", f"--cache-dir={cache}", "explain", path],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"kubectl explain {path}: {result.stderr}"
        assert "<no description>" not in result.stdout and "<empty>" not in result.stdout, result.stdout
        return _words(result.stdout)

    return run


def test_the_kind_and_its_top_level_fields_are_described(explain: Any) -> None:
    schema = _schema()
    out = explain("vmsb")
    assert "KIND: VMSandbox VERSION: v1alpha1" in out
    assert f"DESCRIPTION: {_words(schema['description'])}" in out
    for name in ("spec", "status"):
        assert _words(schema["properties"][name]["description"]) in out, name
    for name, prop in TYPE_META.items():
        assert _words(prop["description"]) in out, f"{name}: the standard description is published"


def test_every_field_below_spec_and_status_is_described(explain: Any) -> None:
    assert len(FIELDS) > 40, "the walk must reach nested fields"
    undescribed = []
    for path, description in FIELDS:
        out = explain(path)
        field = path.rsplit(".", 1)[1]
        assert f"FIELD: {field} <" in out, out
        if not description.strip() or f"DESCRIPTION: {_words(description)}" not in out:
            undescribed.append(path)
    assert undescribed == [], "kubectl explain prints no (or another) description for these"


def test_a_field_that_does_not_exist_is_refused(explain: Any, kube: LocalCluster) -> None:
    kubectl = find_tool("kubectl")
    result = subprocess.run(
        [str(kubectl), f"--kubeconfig={kube.kubeconfig_path}", "explain", "vmsb.spec.resources.disk"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert 'field "disk" does not exist' in result.stderr
