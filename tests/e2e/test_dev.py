"""``vmsandbox dev`` as a newcomer runs it: one command up, a sandbox through it, Ctrl-C, nothing left."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.processes import REPO, DevProcess
from tests.node_agent.support import Registry, wait_for
from vmsandbox.api.constants import SUBRESOURCE_GROUP
from vmsandbox.cli import main as cli
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.requestlog import read_request_log

pytestmark = pytest.mark.kube


def test_dev_runs_a_sandbox_and_stops_everything_on_ctrl_c(
    kube: LocalCluster, registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del kube  # only for the binaries: dev starts its own control plane
    dev = DevProcess(tmp_path, registry.host, "vmsbdev")
    try:
        kubeconfig = dev.wait_ready()
        assert "VM backend: process (chosen with --hypervisor)" in dev.text()
        manifest = tmp_path / "hello.yaml"
        manifest.write_text(
            (REPO / "samples" / "hello.yaml")
            .read_text()
            .replace("docker.io/library/busybox:1.36", registry.busybox)
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
        # Through the API server: dev's operator serves subresources.vmsandbox.io.
        logged = read_request_log(dev.workdir / "requests.jsonl")
        assert [r.status for r in logged if r.group == SUBRESOURCE_GROUP and r.subresource == "log"] == [200]
    finally:
        code = dev.interrupt()
    leftovers = dev.leftovers()
    assert code == 0, dev.text()[-3000:]
    assert leftovers == [], "dev left processes behind"
    assert not (tmp_path / "cache" / "vmsandbox" / "dev" / "kubeconfig").exists()
