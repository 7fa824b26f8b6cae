"""``kubectl explain`` describes every kind in crds/ (VMSandbox: ``vmsb``) and every field below
it, against the local control plane: the real API server holding the generated CRDs, their
OpenAPI v3 published by the front.

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


def _kinds() -> list[tuple[str, str, dict[str, Any]]]:
    """(short name or plural, group/version, schema) of every served version of every CRD in crds/."""
    out = []
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                gv = f"{spec['group']}/{version['name']}"
                name = (spec["names"].get("shortNames") or [spec["names"]["plural"]])[0]
                out.append((name, gv, version["schema"]["openAPIV3Schema"]))
    return out


def _fields(node: dict[str, Any], path: str) -> list[tuple[str, str]]:
    """(kubectl explain path, description) of every field below ``node``; list items are stepped into."""
    out: list[tuple[str, str]] = []
    for name, prop in node.get("properties", {}).items():
        where = f"{path}.{name}"
        out.append((where, prop.get("description", "")))
        out += _fields(prop, where)
        out += _fields(prop.get("items") or {}, where)
    return out


KINDS = _kinds()
FIELDS = [
    (gv, path, description)
    for name, gv, schema in KINDS
    for path, description in _fields(schema, name)
    if path.split(".")[1] not in TYPE_META
]


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def explain(kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        missing("kubectl is not installed")
    cache = tmp_path_factory.mktemp("kubectl-cache")

    def run(path: str, api_version: str) -> str:
        result = subprocess.run(
            [
                str(kubectl),
                f"--kubeconfig={kube.kubeconfig_path}",
                f"--cache-dir={cache}",
                "explain",
                path,
                f"--api-version={api_version}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"kubectl explain {path}: {result.stderr}"
        assert "<no description>" not in result.stdout and "<empty>" not in result.stdout, result.stdout
        return _words(result.stdout)

    return run


@pytest.mark.parametrize(("name", "gv", "schema"), KINDS, ids=[f"{k[0]}/{k[1]}" for k in KINDS])
def test_the_kind_and_its_top_level_fields_are_described(
    explain: Any, name: str, gv: str, schema: dict[str, Any]
) -> None:
    out = explain(name, gv)
    assert f"VERSION: {gv.split('/')[1]}" in out
    assert f"DESCRIPTION: {_words(schema['description'])}" in out
    for field, prop in schema["properties"].items():
        expected = TYPE_META.get(field, prop)
        assert _words(expected["description"]) in out, f"{field}: no description"


def test_vmsb_names_the_kind(explain: Any) -> None:
    assert "KIND: VMSandbox VERSION: v1alpha1" in explain("vmsb", "vmsandbox.io/v1alpha1")


def test_every_field_below_the_top_level_is_described(explain: Any) -> None:
    assert len(FIELDS) > 40, "the walk must reach nested fields"
    undescribed = []
    for gv, path, description in FIELDS:
        out = explain(path, gv)
        field = path.rsplit(".", 1)[1]
        assert f"FIELD: {field} <" in out, out
        if not description.strip() or f"DESCRIPTION: {_words(description)}" not in out:
            undescribed.append(path)
    assert undescribed == [], "kubectl explain prints no (or another) description for these"


def test_a_field_that_does_not_exist_is_refused(kube: LocalCluster) -> None:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        missing("kubectl is not installed")
    result = subprocess.run(
        [str(kubectl), f"--kubeconfig={kube.kubeconfig_path}", "explain", "vmsb.spec.resources.disk"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert 'field "disk" does not exist' in result.stderr
