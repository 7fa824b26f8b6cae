"""The API server gone for 90 s with sandboxes running: none torn down, none run twice, statuses right.

The front (all any client reaches) is stopped, so every call of the agents is refused. Which
rule applies shows in the two agents: the first keeps the default node-loss grace (60 s), so
past it the agent fences its Always sandbox (the operator would run it elsewhere) and starts
it again once it reconnects; the second's grace (120 s) outlasts the outage, so its Always
sandbox runs through untouched. Never sandboxes run through on both; one that ends during the
outage is recorded and reported, with its exit code, once the API server is back.
"""

from __future__ import annotations

import time

import pytest

from tests.node_agent.resilience import MakeAgent, record, runs, teardowns
from tests.node_agent.support import Cluster, Registry, containers_left, pid_alive, unique, wait_for
from vmsandbox.devcluster import LocalCluster

pytestmark = pytest.mark.kube

OUTAGE = 90.0


def test_sandboxes_outlive_a_90s_api_server_outage(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry, kube: LocalCluster
) -> None:
    fencing = make_agent(VMSANDBOX_AGENT_NODE_LOST_GRACE_SECONDS="60")
    patient = make_agent(VMSANDBOX_AGENT_NODE_LOST_GRACE_SECONDS="120")
    image = registry.busybox

    def create(agent_node: str, policy: str, script: str) -> tuple[str, str]:
        name = unique(policy.lower())
        spec = {
            "image": image,
            "command": ["sh", "-c", f"echo run-marker; {script}"],
            "restartPolicy": policy,
        }
        return name, cluster.create_sandbox(name, spec, node=agent_node)["metadata"]["uid"]

    sandboxes = {
        "never": (fencing, *create(fencing.node, "Never", "exec sleep 600")),
        "ends": (fencing, *create(fencing.node, "Never", "sleep 25; exit 5")),
        "always": (fencing, *create(fencing.node, "Always", "exec sleep 600")),
        "patient": (patient, *create(patient.node, "Always", "exec sleep 600")),
    }
    vmm = {}
    for key, (_agent, name, _uid) in sandboxes.items():
        vmm[key] = cluster.wait_phase(name, "Running", timeout=60)["vm"]["vmmPID"]

    kube.stop_front()
    try:
        cut = time.monotonic()
        ended = wait_for(
            "the ending sandbox's exit to be recorded",
            lambda: (record(fencing, sandboxes["ends"][2]) or {}).get("finished"),
            timeout=60,
        )
        assert ended["exit_code"] == 5
        fenced = wait_for(
            "the first agent to fence its Always sandbox",
            lambda: (record(fencing, sandboxes["always"][2]) or {}).get("fenced_at"),
            timeout=OUTAGE,
        )
        assert fenced and time.monotonic() - cut > 50, "fenced only near the 60 s grace"
        for key in ("never", "patient"):
            assert pid_alive(vmm[key]), f"{key} runs through the outage"
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - cut)))
        for key in ("never", "patient"):
            assert pid_alive(vmm[key])
        assert not pid_alive(vmm["always"])
    finally:
        kube.start_front()

    status = wait_for(
        "statuses to be right",
        lambda: (
            cluster.status(sandboxes["ends"][1]).get("phase") == "Failed"
            and (s := cluster.status(sandboxes["always"][1])).get("phase") == "Running"
            and s.get("restartCount") == 1
            and s
        ),
        timeout=60,
    )
    assert status["vm"]["vmmPID"] != vmm["always"], "the fenced Always sandbox started again, once"
    ends = cluster.status(sandboxes["ends"][1])
    assert ends["container"]["exitCode"] == 5 and ends["reason"] == "Error"
    for key in ("never", "patient"):
        _agent, name, _uid = sandboxes[key]
        status = cluster.status(name)
        assert status["phase"] == "Running" and status["vm"]["vmmPID"] == vmm[key], (key, status)
        assert status.get("restartCount", 0) == 0 and teardowns(_agent, name) == []
    for key, (agent, _name, uid) in sandboxes.items():
        assert runs(agent, uid) == (2 if key == "always" else 1), key
    assert teardowns(fencing, sandboxes["always"][1])[0].startswith("VM torn down (fenced:")
    assert len(containers_left(fencing.runtime_root)) == 2  # never + the restarted always
    assert len(containers_left(patient.runtime_root)) == 1
