"""hack/install-helm.sh and hack/kind-e2e.sh: lint, and the installer's idempotence."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.chart.helm import REPO, TOOLS_ENV, missing, tools_dir
from tests.tools import assert_shellcheck_clean

SCRIPTS = [REPO / "hack" / "install-helm.sh", REPO / "hack" / "kind-e2e.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script: os.PathLike[str]) -> None:
    assert_shellcheck_clean(script)


def test_install_helm_is_idempotent() -> None:
    """A second run with the tools in place touches nothing and still names the directory."""
    tools = tools_dir()
    helm = tools / "helm"
    if not (helm.is_file() and (tools / "kubectl").is_file() and (tools / ".layer-version").is_file()):
        missing(f"helm/kubectl are not installed in {tools} by hack/install-helm.sh")
    before = {p.name: p.stat().st_mtime_ns for p in (helm, helm.parent / "kubectl")}
    env = {**os.environ, TOOLS_ENV: str(helm.parent)}
    proc = subprocess.run(
        ["bash", str(SCRIPTS[0])], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(helm.parent)
    after = {p.name: p.stat().st_mtime_ns for p in (helm, helm.parent / "kubectl")}
    assert after == before
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v4.")
