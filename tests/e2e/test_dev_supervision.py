"""``vmsandbox dev`` supervises its operator and agent as a Deployment and a DaemonSet would."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.processes import DevProcess
from tests.node_agent.support import Registry, wait_for
from vmsandbox.cli import Backend, Component, DevStack
from vmsandbox.cli import main as cli
from vmsandbox.devcluster.cluster import LocalCluster


def _stack(tmp_path: Path) -> DevStack:
    return DevStack(tmp_path, tmp_path / "kubeconfig", Backend("process", "test"), "n1")


def test_an_exited_component_is_started_again_after_a_doubling_backoff(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stack._spawn("flaky", ["sh", "-c", "echo run; exit 3"], dict(os.environ))
    component = stack.components[0]
    assert component.proc is not None
    component.proc.wait(10)
    now = component.started_at + 1.0
    said = stack.supervise(now)
    assert len(said) == 1 and "flaky exited with status 3" in said[0] and "in 1s" in said[0]
    assert stack.supervise(now + 0.5) == []  # still backing off
    said = stack.supervise(now + 1.0)
    assert said and "flaky started again" in said[0]
    assert component.restarts == 1
    component.proc.wait(10)
    said = stack.supervise(component.started_at + 1.0)
    assert "in 2s" in said[0], said  # doubled
    component.restarts = 10
    assert component.backoff(ran_for=1.0) == Component.MAX_BACKOFF  # capped
    assert component.backoff(ran_for=Component.STABLE) == Component.FIRST_BACKOFF  # a stable run resets it
    assert (tmp_path / "flaky.log").read_text().count("run") == 2  # the same log, appended
    stack.stop()
    assert stack.components == []


def test_stop_ends_a_component_even_while_it_backs_off(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stack._spawn("quick", ["true"], dict(os.environ))
    stack._spawn("long", ["sleep", "60"], dict(os.environ))
    quick = stack.components[0]
    assert quick.proc is not None
    quick.proc.wait(10)
    assert stack.supervise()  # scheduled for a restart
    long_pid = stack.pid("long")
    assert long_pid is not None and stack.pid("quick") is None
    stack.stop()
    assert not Path(f"/proc/{long_pid}").exists() or "Z" in Path(f"/proc/{long_pid}/stat").read_text()


@pytest.mark.kube
def test_dev_restarts_a_killed_operator_and_agent_and_leaves_sandboxes_running(
    kube: LocalCluster, registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del kube  # only for the binaries: dev starts its own control plane
    dev = DevProcess(tmp_path, registry.host, "vmsbsup")
    out = dev.out
    try:
        kubeconfig = dev.wait_ready()
        pids = re.search(r"operator pid (\d+), agent pid (\d+)", dev.text())
        assert pids, dev.text()
        operator_pid, agent_pid = int(pids[1]), int(pids[2])
        cfg = ["--kubeconfig", kubeconfig]
        manifest = tmp_path / "long.yaml"
        manifest.write_text(
            "apiVersion: vmsandbox.io/v1alpha1\nkind: VMSandbox\nmetadata: {name: long}\n"
            f"spec: {{image: '{registry.host}/test/busybox:latest', command: [sleep, '3600'],"
            " resources: {vcpus: 1, memoryMiB: 128}}\n"
        )
        assert cli([*cfg, "apply", "-f", str(manifest)]) == 0

        def sandbox() -> dict[str, object]:
            capsys.readouterr()
            assert cli([*cfg, "get", "long", "-o", "json"]) == 0
            return dict(json.loads(capsys.readouterr().out).get("status") or {})

        try:
            wait_for("long Running", lambda: sandbox().get("phase") == "Running", 90)
        except AssertionError as exc:  # where it got to, and what both components said
            raise AssertionError(f"{exc}\nstatus: {sandbox()}\n{dev.logs()}") from None
        before = sandbox()

        for name, pid in (("operator", operator_pid), ("agent", agent_pid)):
            os.kill(pid, signal.SIGKILL)
            line = wait_for(
                f"{name} started again",
                lambda n=name: re.search(rf"{n} started again \(pid (\d+)\)", out.read_text()),
                30,
            )
            new_pid = int(line[1])
            assert new_pid != pid and Path(f"/proc/{new_pid}").exists()
            assert f"{name} exited with status -9" in out.read_text()

        # The restarted agent adopts the running sandbox: same VM, same container, no restart.
        wait_for("agent ready again", lambda: "Ready" in json.dumps(sandbox().get("conditions")), 60)
        time.sleep(3)  # a pass of the restarted agent and operator
        after = sandbox()
        assert after["phase"] == "Running", after
        assert after["vm"] == before["vm"] and after["container"] == before["container"], (before, after)
        assert after.get("restartCount", 0) == before.get("restartCount", 0) == 0
        vm = before["vm"]
        assert isinstance(vm, dict) and Path(f"/proc/{vm['vmmPID']}").exists()
        assert cli([*cfg, "delete", "long", "--wait", "--timeout", "90"]) == 0
    finally:
        code = dev.interrupt()
    leftovers = dev.leftovers()
    assert code == 0, dev.text()[-3000:]
    assert leftovers == [], "dev left processes behind"
