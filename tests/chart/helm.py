"""The real ``helm`` binary (from ``hack/install-helm.sh``) and the chart rendered through it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypedDict, Unpack

import yaml

from tests import tools

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vmsandbox"
VALUES_DIR = Path(__file__).resolve().parent / "values"
#: Release name and namespace the tests install as; object names follow from them.
RELEASE = "vmsandbox"
NAMESPACE = "vmsandbox-system"
TOOLS_ENV = "VMSANDBOX_TOOLS_DIR"


def missing(reason: str) -> NoReturn:
    """Skip, or fail where the tools are promised (CI sets VMSANDBOX_REQUIRE_TOOLS=1)."""
    tools.missing(f"{reason}; run `bash hack/install-helm.sh`")


def tools_dir() -> Path:
    """Where hack/install-helm.sh puts helm and kubectl."""
    return Path(os.environ.get(TOOLS_ENV) or Path.home() / ".cache" / "vmsandbox" / "tools")


def find_tool(name: str) -> Path | None:
    candidate = tools_dir() / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


class TemplateOptions(TypedDict, total=False):
    """``helm template`` settings besides the values: the release's namespace and name, and CRDs."""

    namespace: str
    release: str
    include_crds: bool


@dataclass(frozen=True)
class Helm:
    binary: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": "/tmp/vmsandbox-helm/cache"}
        env.setdefault("HELM_CONFIG_HOME", "/tmp/vmsandbox-helm/config")
        env.setdefault("HELM_DATA_HOME", "/tmp/vmsandbox-helm/data")
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def template_args(
        self, values: Sequence[Path] = (), sets: Iterable[str] = (), **options: Unpack[TemplateOptions]
    ) -> list[str]:
        namespace = options.get("namespace", NAMESPACE)
        args = ["template", options.get("release", RELEASE), str(CHART), "--namespace", namespace]
        for path in values:
            args += ["--values", str(path)]
        for item in sets:
            args += ["--set", item]
        if options.get("include_crds", False):
            args.append("--include-crds")
        return args

    def render(
        self, values: Sequence[Path] = (), sets: Iterable[str] = (), **options: Unpack[TemplateOptions]
    ) -> list[dict[str, Any]]:
        """Every object ``helm template`` renders, parsed."""
        out = self.run(*self.template_args(values, sets, **options)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def get_helm() -> Helm:
    binary = find_tool("helm")
    if binary is None:
        missing("helm is not installed")
    assert binary is not None
    return Helm(binary)


def value_files() -> list[Path]:
    return sorted(VALUES_DIR.glob("*.yaml"))


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: Iterable[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} named *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]
