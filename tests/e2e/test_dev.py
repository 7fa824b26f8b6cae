"""``vmsandbox dev`` as a newcomer runs it: one command up, a sandbox through it, Ctrl-C, nothing left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.processes import REPO
from tests.leaks import processes_mentioning
from tests.node_agent.support import Registry, wait_for
from vmsandbox.cli import main as cli
from vmsandbox.devcluster.binaries import CACHE_ENV, cache_dir
from vmsandbox.devcluster.cluster import LocalCluster

pytestmark = pytest.mark.kube


def test_dev_runs_a_sandbox_and_stops_everything_on_ctrl_c(
    kube: LocalCluster, registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del kube  # only for the binaries: dev starts its own control plane
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmsbdev{os.getpid()}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # dev's kubeconfig link lands here, not in ~/.cache
        CACHE_ENV: str(cache_dir()),  # ... while the API server binaries are still the cached ones
        "VMSANDBOX_AGENT_INSECURE_REGISTRIES": registry.host,
    }
    env.pop("KUBECONFIG", None)
    out = tmp_path / "dev.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmsandbox", "dev", "--hypervisor", "process", "--workdir", str(workdir)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_for("dev ready", lambda: "export KUBECONFIG=" in out.read_text() or proc.poll() is not None, 120)
        text = out.read_text()
        assert proc.poll() is None, text
        assert "VM backend: process (chosen with --hypervisor)" in text
        kubeconfig = next(
            line.split("=", 1)[1] for line in text.splitlines() if line.startswith("export KUBECONFIG=")
        )
        manifest = tmp_path / "hello.yaml"
        manifest.write_text(
            (REPO / "samples" / "hello.yaml")
            .read_text()
            .replace("docker.io/library/busybox:1.36", f"{registry.host}/test/busybox:latest")
        )
        cfg = ["--kubeconfig", kubeconfig]
        assert cli([*cfg, "apply", "-f", str(manifest)]) == 0

        def phase() -> str | None:
            capsys.readouterr()
            cli([*cfg, "get", "hello"])
            row = capsys.readouterr().out.splitlines()[1].split()
            return row[1] if row[1] in ("Succeeded", "Failed") else None

        assert wait_for("hello finished", phase, timeout=90) == "Succeeded"
        capsys.readouterr()
        assert cli([*cfg, "logs", "hello"]) == 0
        assert capsys.readouterr().out.startswith("hello from ")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    time.sleep(0.5)
    leftovers = processes_mentioning(str(workdir))
    shutil.rmtree(workdir, ignore_errors=True)
    assert code == 0, out.read_text()[-3000:]
    assert leftovers == [], "dev left processes behind"
    assert not (tmp_path / "cache" / "vmsandbox" / "dev" / "kubeconfig").exists()
