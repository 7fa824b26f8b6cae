"""spec.paused end to end: the agent pauses a running sandbox's VM (phase and condition Paused),
a counter in its container stops and goes on from where it was after resume, and a paused
sandbox is deleted cleanly."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, pid_alive, unique, wait_for

pytestmark = pytest.mark.kube

COUNTER = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"]


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def set_paused(cluster: Cluster, name: str, paused: bool) -> None:
    cluster.merge_patch(name, {"spec": {"paused": paused}})


def counts(agent: AgentProcess, cluster: Cluster, name: str) -> list[int]:
    text = agent.get(f"/logs/{cluster.namespace}/{name}").text
    return [int(word) for word in text.split() if word.isdigit()]


def wait_above(agent: AgentProcess, cluster: Cluster, name: str, above: int) -> int:
    def check() -> int | None:
        seen = counts(agent, cluster, name)
        return seen[-1] if seen and seen[-1] > above else None

    return wait_for(f"the counter to pass {above}", check, timeout=60)


def test_pause_and_resume_keep_the_counter(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry, hypervisor: str
) -> None:
    agent = make_agent()
    name = unique("pz")
    spec = registry.sandbox(COUNTER, hypervisor=hypervisor)
    cluster.create_sandbox(name, spec, node=agent.node)
    cluster.wait_phase(name, "Running", timeout=90)
    wait_above(agent, cluster, name, 3)

    set_paused(cluster, name, True)
    status = cluster.wait_phase(name, "Paused", timeout=30)
    paused = _cond(status, "Paused")
    assert paused["status"] == "True" and paused["reason"] == "Paused"
    time.sleep(1.0)  # output already written reaches the log
    frozen = counts(agent, cluster, name)[-1]
    time.sleep(2.5)
    assert counts(agent, cluster, name)[-1] == frozen, "the counter advanced while paused"
    assert "Paused" in [e["reason"] for e in cluster.events(name)]

    set_paused(cluster, name, False)
    status = cluster.wait_phase(name, "Running", timeout=30)
    resumed = _cond(status, "Paused")
    assert resumed["status"] == "False" and resumed["reason"] == "Resumed"
    wait_above(agent, cluster, name, frozen + 3)
    seen = counts(agent, cluster, name)
    assert seen == list(range(1, len(seen) + 1)), "the counter restarted or skipped"
    assert status.get("restartCount", 0) == 0

    # Deleting a paused sandbox tears its VM down like any other.
    set_paused(cluster, name, True)
    cluster.wait_phase(name, "Paused", timeout=30)
    cluster.delete(name)
    cluster.wait_gone(name, timeout=60)


def test_a_paused_sandbox_past_its_deadline_is_stopped_and_fails(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    name = unique("pzd")
    spec = registry.sandbox(
        ["sleep", "600"], hypervisor="process", activeDeadlineSeconds=8, paused=True, restartPolicy="Always"
    )
    cluster.create_sandbox(name, spec, node=agent.node)
    status = cluster.wait_phase(name, "Paused", timeout=60)
    vmm_pid = status["vm"]["vmmPID"]
    status = cluster.wait_phase(name, "Failed", timeout=60)
    assert status["reason"] == "DeadlineExceeded"
    assert status.get("restartCount", 0) == 0, "a deadline is final, paused or not"
    wait_for("the paused VM to be stopped", lambda: not pid_alive(vmm_pid), timeout=30)
    cluster.delete(name)
    cluster.wait_gone(name, timeout=60)
