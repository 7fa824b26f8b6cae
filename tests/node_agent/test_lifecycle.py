"""A sandbox scheduled to the agent's node runs to completion, with its status written as it goes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.node_agent.resilience import OwnAgent
from tests.node_agent.support import Cluster, MakeAgent, Registry, pid_alive, unique, wait_for
from vmsandbox.api.constants import AGENT_FINALIZER
from vmsandbox.devcluster import LocalCluster

pytestmark = pytest.mark.kube


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def test_exit_zero_succeeds_with_boot_timings(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry, hypervisor: str
) -> None:
    agent = make_agent()
    name = unique("ok")
    spec = {
        "image": f"{registry.host}/test/busybox:latest",
        "command": ["sh", "-c", "echo hello from $HOSTNAME; exit 0"],
        "hypervisor": hypervisor,
    }
    cluster.create_sandbox(name, spec, node=agent.node)
    status = cluster.wait_phase(name, "Succeeded", timeout=60)

    assert status["container"]["exitCode"] == 0
    assert status["reason"] == "Completed"
    assert status["hypervisor"] == hypervisor
    assert status["nodeName"] == agent.node
    timings = status["bootTimings"]
    assert timings["schedule"] == 1.5  # the operator's, kept through the agent's writes
    for stage in ("image", "vmmStart", "vmBoot", "agentReady", "containerCreate", "total"):
        assert timings[stage] >= 0, stage
        assert round(timings[stage], 1) == timings[stage], (stage, timings[stage])
    assert timings["total"] >= timings["vmmStart"] + timings["vmBoot"] + timings["containerCreate"]
    assert _cond(status, "Scheduled")["status"] == "True"  # the operator's condition survives
    assert _cond(status, "Ready")["status"] == "False"
    assert _cond(status, "Ready")["reason"] == "Completed"
    obj = cluster.get(name)
    assert obj is not None and AGENT_FINALIZER in obj["metadata"]["finalizers"]

    # The container's output is served on the agent's port.
    logs = wait_for("container log", lambda: agent.get(f"/logs/{cluster.namespace}/{name}").text or None)
    assert "hello from" in logs
    reasons = [e["reason"] for e in cluster.events(name)]
    for reason in ("Pulling", "Pulled", "VMBooted", "Started", "Completed"):
        assert reason in reasons, reasons

    cluster.delete(name)
    cluster.wait_gone(name)


def test_exit_code_three_fails(make_agent: MakeAgent, cluster: Cluster, registry: Registry) -> None:
    agent = make_agent()
    name = unique("three")
    cluster.create_sandbox(
        name,
        {"image": f"{registry.host}/test/busybox:latest", "command": ["sh", "-c", "exit 3"]},
        node=agent.node,
    )
    status = cluster.wait_phase(name, "Failed", "Succeeded", timeout=60)
    assert status["phase"] == "Failed"
    assert status["container"]["exitCode"] == 3
    assert status["reason"] == "Error"
    assert "exited with code 3" in status["message"]
    assert "restartCount" in status and status["restartCount"] == 0


def test_running_sandbox_reports_vm_and_container(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    name = unique("run")
    cluster.create_sandbox(
        name,
        {
            "image": f"{registry.host}/test/busybox:latest",
            "command": ["sleep", "300"],
            "env": [{"name": "GREETING", "value": "hi"}],
            "annotations": {"example.com/kind": "test"},
        },
        node=agent.node,
    )
    status = cluster.wait_phase(name, "Running", timeout=60)
    assert pid_alive(status["vm"]["vmmPID"])
    assert status["container"]["id"].startswith("vmsb-")
    for kind in ("VMReady", "ContainerReady", "Ready"):
        assert _cond(status, kind)["status"] == "True", kind
    bundle_configs = list((agent.state_dir / "sandboxes").glob("*/bundle/config.json"))
    assert len(bundle_configs) == 1
    config = bundle_configs[0].read_text()
    assert "GREETING=hi" in config and "example.com/kind" in config

    metrics = agent.get("/metrics").text
    assert 'vmsandbox_agent_sandboxes{phase="Running"} 1.0' in metrics
    assert "vmsandbox_agent_boot_stage_seconds_bucket" in metrics
    lines = [line for line in agent.log_lines() if line.get("msg", "").startswith("running")]
    assert lines and lines[0]["namespace"] == cluster.namespace and lines[0]["name"] == name

    vmm = status["vm"]["vmmPID"]
    cluster.delete(name)
    cluster.wait_gone(name)
    wait_for("the VMM to exit", lambda: not pid_alive(vmm), timeout=10)
    assert not list((agent.state_dir / "sandboxes").iterdir()), "bundle and log must be freed"


def test_agent_writes_three_times_from_scheduled_to_running(
    own_agent: OwnAgent, cluster: Cluster, registry: Registry, kube: LocalCluster
) -> None:
    """Finalizer, Creating, then Running with the VM's details: no write of its own for "booted".

    Counted are writes that took effect; a guarded finalizer patch refused (422) because the
    operator's status write landed in between is retried, and is not a write.
    """
    agent, user = own_agent  # its own user, so its requests can be told apart
    name = unique("writes")
    mark = len(kube.requests_made())
    cluster.create_sandbox(
        name, {"image": f"{registry.host}/test/busybox:latest", "command": ["sleep", "30"]}, node=agent.node
    )
    status = cluster.wait_phase(name, "Running", timeout=60)
    assert _cond(status, "VMReady")["status"] == "True" and status["vm"]["vmmPID"] > 0
    assert status["bootTimings"]["vmBoot"] >= 0 and status["bootTimings"]["total"] > 0
    writes = [
        (r.verb, r.subresource)
        for r in kube.requests_made(since=mark)
        if r.user == user
        and r.resource == "vmsandboxes"
        and r.name == name
        and r.verb in ("create", "update", "patch")
        and r.status < 400
    ]
    assert writes == [("patch", ""), ("update", "status"), ("update", "status")], writes
    cluster.delete(name)
    cluster.wait_gone(name)
