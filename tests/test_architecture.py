"""Imports point one way: api -> operator -> node_agent -> runtime -> hypervisor -> guest.

Each layer may import the layers after it (and the api models, which the cluster-facing
layers share), never one before it, so the guest agent stays small and the hypervisor
drivers never learn about Kubernetes. Every module of the package belongs to one layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vmsandbox"

#: Modules at the bottom that every layer may import: the error root, the one settings
#: loader (:mod:`vmsandbox.config`) and what the proxies share
#: (:mod:`vmsandbox.streamproxy`). They import nothing else from vmsandbox.
SHARED = {"errors", "config", "streamproxy", "metrics"}

#: What each layer may import from vmsandbox besides itself and :data:`SHARED`. An entry names a
#: layer, or one module of it (``hypervisor.vmmuser``: that module and its submodules only).
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    # The one client of the API server (connection, requests, typed errors, watches, Events,
    # Leases): every cluster-facing layer reaches the server through it.
    "kube": {"api"},
    "operator": {"api", "kube"},
    "node_agent": {"api", "kube", "runtime", "hypervisor", "guest"},
    "runtime": {"hypervisor", "guest"},
    "hypervisor": {"guest"},
    "guest": set(),
    # The local control plane, and ``vmsandbox dev``'s supervisor, which starts the operator and
    # the agent as subprocesses (never imports them) and picks the VMMs' user as the drivers
    # resolve it.
    "devcluster": {"api", "kube", "hypervisor.vmmuser"},
    "sdk": {"api", "kube"},
    # The ``vmsandbox`` command (cli.py, cli_*.py, __main__.py): a client of the API server and
    # the agents, and the starter of ``vmsandbox dev``. It reaches the API server through the
    # kube layer, and nothing else of the components.
    "cli": {"api", "sdk", "devcluster", "kube"},
}


def _layer_files(layer: str) -> list[Path]:
    if layer == "cli":
        return sorted([*PACKAGE.glob("cli*.py"), PACKAGE / "__main__.py"])
    if layer in SHARED:
        return [PACKAGE / f"{layer}.py"]
    return sorted((PACKAGE / layer).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """The vmsandbox modules ``path`` imports, without the ``vmsandbox.`` prefix."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "vmsandbox":  # from vmsandbox import cli_exec
                names = [f"vmsandbox.{alias.name}" for alias in node.names]
        found.update(name.removeprefix("vmsandbox.") for name in names if name.startswith("vmsandbox."))
    return found


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == entry or name.startswith(entry + ".") for entry in allowed)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_downstream(layer: str) -> None:
    files = _layer_files(layer)
    assert files, f"vmsandbox/{layer} has no modules"
    own = {layer} | ({Path(p).stem for p in files} if layer == "cli" else set())
    allowed = ALLOWED[layer] | own | SHARED
    offenders = {
        f"{path.relative_to(PACKAGE.parent)} imports vmsandbox.{name}"
        for path in files
        for name in _imports(path)
        if not _allowed(name, allowed)
    }
    assert not offenders, "\n".join(sorted(offenders))


@pytest.mark.parametrize("module", sorted(SHARED))
def test_shared_modules_import_only_each_other(module: str) -> None:
    offenders = _imports(PACKAGE / f"{module}.py") - SHARED
    assert not offenders, f"vmsandbox/{module}.py imports {sorted(offenders)}"


def test_every_module_belongs_to_a_layer() -> None:
    covered = {path for layer in [*ALLOWED, *SHARED] for path in _layer_files(layer)}
    loose = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path not in covered and path != PACKAGE / "__init__.py"
    )
    assert not loose, f"modules in no layer of ALLOWED: {loose}"


#: Modules that may name API paths without being clients of the Kubernetes API server: the
#: local control plane (it is that server, and hands tests the official client), the
#: operator's aggregated server (it serves ``/apis/subresources.vmsandbox.io``), and the Cloud
#: Hypervisor driver (whose own REST API lives under ``/api/v1``).
NOT_KUBE_CLIENTS = ("devcluster/", "operator/subresources/server.py", "hypervisor/cloud_hypervisor/")
API_PATH = re.compile(r"^/?apis?/")


def _speaks_to_the_api_server(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names if a.name.split(".")[0] == "kubernetes"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kubernetes":
            found.append(f"imports from {node.module}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and API_PATH.match(node.value):
            found.append(f"names the API path {node.value!r} (line {node.lineno})")
    return found


def test_only_the_kube_layer_speaks_to_the_api_server() -> None:
    """One client of the API server (:mod:`vmsandbox.kube`): no other module imports the
    official client or builds a resource path of its own."""
    offenders = [
        f"{rel}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not (rel := str(path.relative_to(PACKAGE))).startswith(("kube/", *NOT_KUBE_CLIENTS))
        for what in _speaks_to_the_api_server(path)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_api_path_check_finds_what_it_forbids(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('from kubernetes import client\nP = "/api/v1/nodes"\nQ = f"/apis/{G}/v1"\n')
    assert len(_speaks_to_the_api_server(probe)) == 3
