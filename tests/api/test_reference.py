"""The README's API reference is the one the models render, and it covers every CRD property."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vmsandbox.api.crd import render
from vmsandbox.api.reference import (
    BEGIN,
    END,
    POOL_BEGIN,
    POOL_END,
    MarkersMissing,
    current_block,
    render_reference,
    replace_block,
)

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmsandbox.api", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_readme_reference_equals_rendered() -> None:
    printed = _run("reference")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == render_reference()
    readme = (ROOT / "README.md").read_text()
    assert current_block(readme) == printed.stdout, (
        "README.md's API reference is stale: run `python -m vmsandbox.api reference --write README.md`"
    )


def _paths(node: dict[str, Any], prefix: str) -> list[str]:
    out = []
    for name, prop in node.get("properties", {}).items():
        out.append(f"{prefix}{name}")
        out += _paths(prop, f"{prefix}{name}.")
        out += _paths(prop.get("items") or {}, f"{prefix}{name}[].")
    return out


def test_reference_has_a_row_per_property_with_its_crd_description() -> None:
    props = render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    rows = {
        line.split(" | ")[0].strip("| `"): line
        for line in render_reference().splitlines()
        if line.startswith("| `")
    }
    expected = _paths(props["spec"], "spec.") + _paths(props["status"], "status.")
    assert sorted(rows) == sorted(expected)
    memory = props["spec"]["properties"]["resources"]["properties"]["memoryMiB"]
    assert rows["spec.resources.memoryMiB"].endswith(f"| {memory['description']} |")
    assert "`IfNotPresent` \\| `Always` \\| `Never`" in rows["spec.imagePullPolicy"]
    assert "string, required" in rows["spec.image"]
    assert "oci:&lt;absolute path&gt;" in rows["spec.image"], "angle brackets must not vanish as HTML"


def test_write_replaces_only_the_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# title\nbefore\n{BEGIN}\nstale table\n{END}\nafter\n")
    result = _run("reference", "--write", str(doc))
    assert result.returncode == 0, result.stderr
    assert doc.read_text() == f"# title\nbefore\n{BEGIN}\n{render_reference()}{END}\nafter\n"
    again = _run("reference", "--write", str(doc))
    assert again.returncode == 0
    assert doc.read_text() == f"# title\nbefore\n{BEGIN}\n{render_reference()}{END}\nafter\n"


@pytest.mark.parametrize("text", ["no markers at all\n", f"{BEGIN}\nno end\n", f"{END}\n{BEGIN}\n"])
def test_write_refuses_a_document_without_the_block(tmp_path: Path, text: str) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    result = _run("reference", "--write", str(doc))
    assert result.returncode == 1
    assert "no block from" in result.stderr
    assert doc.read_text() == text, "a failed write must leave the file alone"
    with pytest.raises(MarkersMissing):
        replace_block(text, "x\n")


def test_write_is_only_for_the_reference(tmp_path: Path) -> None:
    result = _run("crd", "--write", str(tmp_path / "x.md"))
    assert result.returncode == 2
    assert "--write applies to reference only" in result.stderr


def test_readme_pool_reference_equals_rendered() -> None:
    printed = _run("reference", "--kind", "VMSandboxPool")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == render_reference("VMSandboxPool")
    assert "| `spec.template.resources.memoryMiB` |" in printed.stdout
    assert "| `status.nodes[].desired` |" in printed.stdout
    readme = (ROOT / "README.md").read_text()
    assert current_block(readme, "VMSandboxPool") == printed.stdout, (
        "README.md's VMSandboxPool reference is stale: "
        "run `python -m vmsandbox.api reference --write README.md`"
    )


def test_write_fills_every_block_the_document_has(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"{BEGIN}\nold\n{END}\nmiddle\n{POOL_BEGIN}\nold\n{POOL_END}\n")
    assert _run("reference", "--write", str(doc)).returncode == 0
    assert doc.read_text() == (
        f"{BEGIN}\n{render_reference()}{END}\nmiddle\n{POOL_BEGIN}\n{render_reference('VMSandboxPool')}{POOL_END}\n"
    )
