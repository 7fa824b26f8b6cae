"""The committed CRD is exactly what the models render, and it is structural."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmsandbox.api import Resources
from vmsandbox.api.crd import FILES, facts, render, render_yaml
from vmsandbox.api.image_ref import IMAGE_PATTERN

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_equals_rendered() -> None:
    committed = (ROOT / "crds" / "vmsandboxes.yaml").read_text()
    printed = subprocess.run(
        [sys.executable, "-m", "vmsandbox.api", "crd"], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert printed == render_yaml()
    assert committed == printed, "crds/vmsandboxes.yaml is stale: run `python -m vmsandbox.api crd`"


def _walk(node: Any, path: str = "") -> list[str]:
    """Paths of schema nodes that break the structural-schema rules."""
    bad: list[str] = []
    if isinstance(node, dict):
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            if forbidden in node:
                bad.append(f"{path}: {forbidden}")
        if "properties" in node and "additionalProperties" in node:
            bad.append(f"{path}: properties and additionalProperties")
        container = "properties" in node or "items" in node or "additionalProperties" in node
        if container and "type" not in node:
            bad.append(f"{path}: no type")
        if node.get("default", "x") is None:
            bad.append(f"{path}: null default")
        for key, value in node.get("properties", {}).items():
            bad += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            bad += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            bad += _walk(node["additionalProperties"], f"{path}{{}}")
    return bad


def test_schema_is_structural() -> None:
    schema = render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


def test_crd_declares_what_kubectl_users_see() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "vmsandboxes.yaml").read_text())
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "VMSandbox",
        "vmsandboxes",
        ["vmsb"],
        ["all"],
    )
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Node", "Hypervisor", "Restarts", "Age", "Reason"]
    assert columns["Reason"]["priority"] == 1
    assert [f["jsonPath"] for f in version["selectableFields"]] == [".status.nodeName", ".status.phase"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["image"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("hypervisor" in r for r in rules)
    for field in ("image", "resources"):
        assert spec["properties"][field]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"


def test_image_pattern_has_no_lookaround_for_re2() -> None:
    assert not re.search(r"\(\?[=!<]", IMAGE_PATTERN)


#: Described by the API server itself for every kind; a CRD may not describe metadata at all.
SERVER_DESCRIBED = {".apiVersion", ".kind", ".metadata"}


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    """Paths of properties (at any depth, through items and maps) that carry no description."""
    missing: list[str] = []
    for name, prop in node.get("properties", {}).items():
        where = f"{path}.{name}"
        if not str(prop.get("description", "")).strip() and where not in SERVER_DESCRIBED:
            missing.append(where)
        missing += _undescribed(prop, where)
    if isinstance(node.get("items"), dict):
        missing += _undescribed(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        missing += _undescribed(node["additionalProperties"], f"{path}{{}}")
    return missing


@pytest.mark.parametrize("path", sorted((ROOT / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_every_property_of_every_committed_crd_has_a_description(path: Path) -> None:
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        where = f"{crd['spec']['names']['kind']} {version['name']}"
        assert schema.get("description"), f"{where}: the kind itself has no description"
        assert _undescribed(schema, "") == [], f"{where}: properties without a description"


def test_the_description_walk_finds_a_missing_description() -> None:
    schema = {
        "properties": {
            "a": {"type": "string", "description": "ok"},
            "b": {"type": "array", "description": "ok", "items": {"properties": {"c": {"type": "string"}}}},
            "d": {"type": "object", "properties": {"e": {"type": "integer", "description": " "}}},
            "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": {"kind": {"type": "string"}}},
        }
    }
    assert _undescribed(schema, "") == [".b[].c", ".d", ".d.e", ".spec", ".spec.kind"]


def test_descriptions_state_the_default_and_bounds_the_schema_enforces() -> None:
    spec = render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    memory = spec["properties"]["resources"]["properties"]["memoryMiB"]
    field = Resources.model_fields["memory_mib"]
    assert memory["description"].startswith(str(field.description))
    assert memory["description"].endswith(
        f"Default: {memory['default']}. Range: {memory['minimum']} to {memory['maximum']}."
    )
    assert facts({"type": "string", "default": ""}) == ['Default: "" (empty).']
    assert facts({"type": "integer", "minimum": 0}) == ["Range: at least 0."]
    assert facts({"type": "string", "maxLength": 63}) == ["Length: at most 63 characters."]
    assert facts({"type": "array", "minItems": 1, "maxItems": 8}) == ["Items: 1 to 8."]
    assert facts({"type": "object", "default": {}}) == [], "an object default is its fields' defaults"


def _immutable_paths(node: dict[str, Any], path: str) -> list[str]:
    found = []
    for name, prop in node.get("properties", {}).items():
        rules = [r["rule"] for r in prop.get("x-kubernetes-validations", [])]
        if "self == oldSelf" in rules:
            found.append(f"{path}.{name}")
        found += _immutable_paths(prop, f"{path}.{name}")
    return found


def test_immutable_fields_say_so() -> None:
    spec = render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    immutable = _immutable_paths(spec, "spec")
    assert immutable == ["spec.image", "spec.resources"]
    for path in immutable:
        assert "Immutable." in spec["properties"][path.split(".")[1]]["description"], path
    spec_rules = " ".join(r["rule"] for r in spec["x-kubernetes-validations"])
    assert "oldSelf.hypervisor" in spec_rules
    assert "immutable once set" in spec["properties"]["hypervisor"]["description"]


def test_committed_pool_crd_equals_rendered() -> None:
    committed = (ROOT / "crds" / "vmsandboxpools.yaml").read_text()
    printed = subprocess.run(
        [sys.executable, "-m", "vmsandbox.api", "crd", "--kind", "VMSandboxPool"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    assert printed == render_yaml("VMSandboxPool")
    assert committed == printed, "crds/vmsandboxpools.yaml is stale: `python -m vmsandbox.api crd --dir crds`"


def test_crd_dir_writes_every_kind(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "vmsandbox.api", "crd", "--dir", str(tmp_path)], check=True, cwd=ROOT
    )
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert written == {name: render_yaml(kind) for kind, name in FILES.items()}
    assert sorted(written) == sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))


def test_pool_crd_declares_scale_columns_and_immutability() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "vmsandboxpools.yaml").read_text())
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"], names["shortNames"]) == (
        "VMSandboxPool",
        "vmsandboxpools",
        "vmsandboxpool",
        ["vmsbp"],
    )
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Mode", "Replicas", "Ready", "Age"]
    schema = version["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []
    spec = schema["properties"]["spec"]
    assert _immutable_paths(spec, "spec") == ["spec.mode", "spec.template"]
    replicas = spec["properties"]["replicas"]
    assert (replicas["default"], replicas["minimum"], replicas["maximum"]) == (1, 0, 64)
    nodes = schema["properties"]["status"]["properties"]["nodes"]
    assert nodes["x-kubernetes-list-map-keys"] == ["name"]
