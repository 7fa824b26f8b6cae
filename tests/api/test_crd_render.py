"""The committed CRD is exactly what the models render, and it is structural."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from vmsandbox.api.crd import render, render_yaml
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
