"""Imports point one way: api -> operator -> node_agent -> runtime -> hypervisor -> guest.

Each layer may import the layers after it (and the api models, which the cluster-facing
layers share), never one before it, so the guest agent stays small and the hypervisor
drivers never learn about Kubernetes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vmsandbox"

#: What each layer may import from vmsandbox besides itself, vmsandbox.errors and vmsandbox.config
#: (the one settings loader), which sit below every layer.
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    "operator": {"api"},
    "node_agent": {"api", "runtime", "hypervisor", "guest"},
    "runtime": {"hypervisor", "guest"},
    "hypervisor": {"guest"},
    "guest": set(),
    "devcluster": {"api"},
    "sdk": {"api"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "vmsandbox" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_downstream(layer: str) -> None:
    root = PACKAGE / layer
    if not root.exists():
        pytest.skip(f"vmsandbox/{layer} does not exist yet")
    allowed = ALLOWED[layer] | {layer, "errors", "config"}
    offenders = {
        f"{path.relative_to(PACKAGE.parent)} imports vmsandbox.{name}"
        for path in root.rglob("*.py")
        for name in _imports(path)
        if name not in allowed
    }
    assert not offenders, "\n".join(sorted(offenders))
