"""Every way a sandbox can fail on the node: each ends with a clear reason and the agent carries on."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.node_agent.support import (
    AgentProcess,
    Cluster,
    MakeAgent,
    Registry,
    agent_command,
    pid_alive,
    unique,
    wait_for,
)
from tests.runtime.support import no_vms

pytestmark = pytest.mark.kube


def _placed(
    make_agent: MakeAgent,
    cluster: Cluster,
    registry: Registry,
    prefix: str,
    command: list[str],
    **spec: object,
) -> tuple[AgentProcess, str]:
    """A new agent, and a sandbox running ``command`` placed on its node."""
    agent = make_agent()
    name = unique(prefix)
    cluster.create_sandbox(name, registry.sandbox(command, **spec), node=agent.node)
    return agent, name


def test_missing_image_reports_the_registrys_message(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    name = unique("noimg")
    cluster.create_sandbox(name, {"image": f"{registry.host}/test/absent:1.0"}, node=agent.node)
    status = cluster.wait_phase(name, "Failed", timeout=30)
    assert status["reason"] == "ImagePullFailed"
    assert f"{registry.host}/test/absent:1.0" in status["message"]
    assert "manifest unknown" in status["message"]  # the registry's own words

    def warned() -> bool:  # Events are sent off the status path: this one may follow the status
        return any(e["reason"] == "ImagePullFailed" and e["type"] == "Warning" for e in cluster.events(name))

    wait_for("the ImagePullFailed Warning event", warned, timeout=15)


def test_never_policy_without_the_image_in_the_cache_fails_clearly(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    name = unique("never")
    spec = {"image": registry.busybox, "imagePullPolicy": "Never"}
    cluster.create_sandbox(name, spec, node=agent.node)
    status = cluster.wait_phase(name, "Failed", timeout=30)
    assert status["reason"] == "ErrImageNeverPull"
    assert "not in the node's image cache" in status["message"] and "Never" in status["message"]
    assert not (agent.state_dir / "images" / "layouts").exists() or not any(
        (agent.state_dir / "images" / "layouts").iterdir()
    ), "Never must not pull"

    # Once the image is cached (pulled for another sandbox), Never runs it.
    first = unique("pull")
    cluster.create_sandbox(first, registry.sandbox(["true"]), node=agent.node)
    cluster.wait_phase(first, "Succeeded", timeout=60)
    again = unique("never")
    cluster.create_sandbox(
        again,
        {"image": registry.busybox, "imagePullPolicy": "Never", "command": ["true"]},
        node=agent.node,
    )
    assert cluster.wait_phase(again, "Succeeded", "Failed", timeout=60)["phase"] == "Succeeded"


def test_malformed_sandboxes_fail_with_a_reason_and_the_agent_keeps_working(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    cases = {
        unique("nolayout"): ({"image": "oci:/nonexistent/layout:v1"}, "ImageNotAllowed", "allowedLayoutDirs"),
        unique("nocmd"): (
            {"image": f"{registry.host}/test/busybox:nocmd"},
            "InvalidImage",
            "no Entrypoint or Cmd",
        ),
        unique("qemu"): (
            {"image": registry.busybox, "hypervisor": "qemu"},
            "HypervisorNotAllowed",
            "not allowed",
        ),
    }
    for name, (spec, _reason, _words) in cases.items():
        cluster.create_sandbox(name, spec, node=agent.node)
    for name, (_spec, reason, words) in cases.items():
        status = cluster.wait_phase(name, "Failed", timeout=30)
        assert status["reason"] == reason, status
        assert words in status["message"], status["message"]
    # Still serving: a good sandbox after the bad ones runs.
    good = unique("good")
    cluster.create_sandbox(good, registry.sandbox(["true"]), node=agent.node)
    assert cluster.wait_phase(good, "Succeeded", timeout=60)
    assert agent.alive()
    assert agent.get("/healthz").status_code == 200


def test_on_failure_restarts_with_growing_back_off(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    _, name = _placed(
        make_agent, cluster, registry, "crash", ["sh", "-c", "exit 7"], restartPolicy="OnFailure"
    )
    seen: dict[int, float] = {}

    def restarts_reached() -> bool:
        count = cluster.status(name).get("restartCount") or 0
        seen.setdefault(count, time.monotonic())
        return count >= 3

    wait_for("three restarts", restarts_reached, timeout=60, interval=0.05)
    status = cluster.status(name)
    assert status["phase"] != "Failed"
    assert status["container"]["exitCode"] == 7
    assert status["reason"] == "CrashLoopBackOff"
    # restartCount counts a restart when the failure is seen; the restart itself comes after the
    # back-off, which doubles: 1 s, 2 s, 4 s (base 1 s in the tests). So the n-th gap is at least
    # the (n-1)-th delay plus a boot, and the announced delays double.
    gap_1_2 = seen[2] - seen[1]
    gap_2_3 = seen[3] - seen[2]
    assert gap_1_2 >= 1.0 - 0.3, seen
    assert gap_2_3 >= 2.0 - 0.3, seen
    backoffs = [e["message"] for e in cluster.events(name) if e["reason"] == "BackOff"]
    delays = [m.rsplit("restarting in ", 1)[1] for m in backoffs]
    assert delays[:3] == ["1s", "2s", "4s"], backoffs


def test_on_failure_does_not_restart_a_successful_exit(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    _, name = _placed(make_agent, cluster, registry, "onfail-ok", ["true"], restartPolicy="OnFailure")
    status = cluster.wait_phase(name, "Succeeded", timeout=60)
    assert status["restartCount"] == 0
    assert status["container"]["exitCode"] == 0


def test_always_restarts_even_a_successful_exit(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    _, name = _placed(make_agent, cluster, registry, "always", ["true"], restartPolicy="Always")
    wait_for("two restarts", lambda: (cluster.status(name).get("restartCount") or 0) >= 2, timeout=60)
    status = cluster.status(name)
    assert status["phase"] not in ("Succeeded", "Failed")
    assert status["container"]["exitCode"] == 0


def test_active_deadline_stops_the_sandbox(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    _, name = _placed(make_agent, cluster, registry, "deadline", ["sleep", "600"], activeDeadlineSeconds=4)
    running = cluster.wait_phase(name, "Running", timeout=60)
    vmm = running["vm"]["vmmPID"]
    status = cluster.wait_phase(name, "Failed", timeout=30)
    assert status["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (4s)" in status["message"]
    wait_for("the VMM to exit", lambda: not pid_alive(vmm), timeout=10)


def test_deletion_mid_boot_tears_down_and_removes_the_finalizer(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent, name = _placed(
        make_agent, cluster, registry, "midboot", ["sleep", "600"], hypervisor="cloud-hypervisor"
    )
    cluster.wait_phase(name, "Creating", "Running", timeout=30)
    cluster.delete(name)
    cluster.wait_gone(name, timeout=60)
    wait_for(
        "the runtime root to be empty",
        lambda: not [p for p in agent.runtime_root.iterdir() if not p.name.startswith(".")],
        timeout=10,
    )
    vms = agent.runtime_root / ".vms"
    assert no_vms(vms), list(vms.iterdir())
    assert not any((agent.state_dir / "sandboxes").iterdir())


def test_finalizer_removed_by_someone_else_tears_the_vm_down(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    name = unique("stolen")
    cluster.create_sandbox(name, registry.sandbox(["sleep", "600"]), node=agent.node)
    vmm = cluster.wait_phase(name, "Running", timeout=60)["vm"]["vmmPID"]
    cluster.remove_agent_finalizer(name)
    wait_for("the VMM to be stopped", lambda: not pid_alive(vmm), timeout=15)
    wait_for(
        "a FinalizerRemoved event",
        lambda: any(e["reason"] == "FinalizerRemoved" for e in cluster.events(name)),
    )
    obj = cluster.get(name)
    assert obj is not None and "vmsandbox.io/node-agent" not in (obj["metadata"].get("finalizers") or [])


def test_another_nodes_sandbox_is_never_touched(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    name = unique("elsewhere")
    other = cluster.create_sandbox(name, {"image": registry.busybox}, node="some-other-node")
    unscheduled = unique("pending")
    cluster.create_sandbox(unscheduled, {"image": registry.busybox})
    # Run one of ours to completion, so the agent has demonstrably been working meanwhile.
    mine = unique("mine")
    cluster.create_sandbox(mine, registry.sandbox(["true"]), node=agent.node)
    cluster.wait_phase(mine, "Succeeded", timeout=60)
    after = cluster.get(name)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == other["metadata"]["resourceVersion"]
    assert "finalizers" not in after["metadata"]
    pending = cluster.get(unscheduled)
    assert pending is not None and not pending.get("status") and "finalizers" not in pending["metadata"]
    assert not any(
        e["involvedObject"]["name"] in (name, unscheduled)
        for e in cluster.events(name) + cluster.events(unscheduled)
    )


def test_bad_configuration_is_refused_at_start_up(make_agent: MakeAgent, tmp_path: Path) -> None:
    agent = make_agent(start=False, VMSANDBOX_AGENT_PORT="99999")
    proc = subprocess.run(agent_command(), env=agent.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "port: Input should be less than or equal to 65535" in proc.stderr
    good_env = {k: v for k, v in agent.env.items() if k != "VMSANDBOX_AGENT_PORT"}
    env = {**good_env, "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "cloud-hypervisor"}
    proc = subprocess.run(agent_command(), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "defaultHypervisor 'process' is not in allowedHypervisors ['cloud-hypervisor']" in proc.stderr
    env = {
        **good_env,
        "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "qemu",
        "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "qemu",
    }
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # no stand-in, and qemu's binary name overridden below
    env["VMSANDBOX_QEMU_BINARY"] = "qemu-does-not-exist"
    proc = subprocess.run(agent_command(), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "defaultHypervisor: 'qemu' is not usable on this node" in proc.stderr
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"stateDir": "relative/dir", "unknownOption": 1}))
    env = {k: v for k, v in agent.env.items() if not k.startswith("VMSANDBOX_AGENT_")}
    proc = subprocess.run(
        [*agent_command(), "--config", str(config)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "stateDir: must be an absolute path" in proc.stderr.replace("Value error, ", "")
    assert "unknownOption" in proc.stderr


def test_vm_that_fails_to_boot_reports_vm_boot_failed(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent(CH_STANDIN_FAULTS="refuse-create")
    name = unique("noboot")
    spec = registry.sandbox(["true"], hypervisor="cloud-hypervisor")
    cluster.create_sandbox(name, spec, node=agent.node)
    status = cluster.wait_phase(name, "Failed", timeout=60)
    assert status["reason"] == "VMBootFailed", status
    assert status["message"], status
    vm_ready = next(c for c in status["conditions"] if c["type"] == "VMReady")
    assert vm_ready["status"] == "False" and vm_ready["reason"] == "VMBootFailed"
    metrics = agent.get("/metrics").text
    assert 'vmsandbox_agent_vmm_failures_total{hypervisor="cloud-hypervisor",kind="boot"} 1.0' in metrics
    vms = agent.runtime_root / ".vms"
    assert no_vms(vms), "a failed boot leaves no VM state behind"
