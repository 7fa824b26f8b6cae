"""Fencing: an agent cut off from the API server stops its OnFailure/Always sandboxes before the
operator runs them elsewhere, so none runs twice; its Never sandboxes run on and are reported
Running again once it reconnects.

Two real agents and a real operator; the first agent's API access is cut at the front (every
request of its user fails with 503), the second keeps the brake on mass eviction released
(one of two nodes lost is under its 55%).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.processes import QUICK_OPERATOR, OperatorProcess, running_operator
from tests.node_agent.resilience import MakeAgent, own_user_agent, record, runs
from tests.node_agent.support import Cluster, Registry, containers_left, pid_alive, unique, wait_for
from vmsandbox.devcluster.cluster import LocalCluster

pytestmark = pytest.mark.kube

GRACE = 12
SETTINGS = {**QUICK_OPERATOR, "allowed_hypervisors": "process", "node_lost_grace_seconds": GRACE}
AGENT = {"VMSANDBOX_AGENT_NODE_LOST_GRACE_SECONDS": str(GRACE), "VMSANDBOX_AGENT_LEASE_RENEW_SECONDS": "1"}


@pytest.fixture
def operator(kube: LocalCluster, kube_namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(kube, kube_namespace, tmp_path, **SETTINGS) as op:
        yield op


def _label(kube: LocalCluster, node: str, labels: dict[str, str]) -> None:
    resp = kube.http(
        "PATCH",
        f"/api/v1/nodes/{node}",
        json={"metadata": {"labels": labels}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text


def _lost(status: dict[str, Any], node: str) -> bool:
    """The operator has given up on ``node`` for this sandbox (NodeLost, or already moved)."""
    return (
        status.get("reason") == "NodeLost"
        or status.get("nodeName") not in (node, None)
        or (status.get("phase") == "Pending")
    )


def test_a_cut_off_agent_fences_always_sandboxes_before_the_operator_reschedules_them(
    kube: LocalCluster,
    operator: OperatorProcess,
    make_agent: MakeAgent,
    cluster: Cluster,
    registry: Registry,
    request: pytest.FixtureRequest,
) -> None:
    first, user = own_user_agent(kube, make_agent, request, **AGENT)
    second = make_agent(**AGENT)
    _label(kube, first.node, {"pool": "first"})
    image = registry.busybox

    def spec(policy: str) -> dict[str, Any]:
        return {
            "image": image,
            "command": ["sh", "-c", "echo run-marker; exec sleep 600"],
            "hypervisor": "process",
            "restartPolicy": policy,
            "nodeSelector": {"pool": "first"},
        }

    always, never = unique("always"), unique("never")
    uids = {
        n: cluster.create_sandbox(n, spec(p))["metadata"]["uid"]
        for n, p in ((always, "Always"), (never, "Never"))
    }
    vmm = {}
    for name in (always, never):
        status = cluster.wait_phase(name, "Running", timeout=60)
        assert status["nodeName"] == first.node
        vmm[name] = status["vm"]["vmmPID"]
    _label(kube, second.node, {"pool": "first"})  # where the operator may move the Always one

    cut = time.monotonic()
    kube.inject_fault(user=user, status=503, count=None)
    fenced_after = lost_after = None
    fenced_record: dict[str, Any] | None = None
    while lost_after is None:
        assert time.monotonic() - cut < 3 * GRACE, f"no NodeLost verdict: {cluster.status(always)}"
        if fenced_after is None and not pid_alive(vmm[always]):
            fenced_after = time.monotonic() - cut
            # Saved before the VM was stopped (the watch stream opened before the cut still
            # flows, so once the operator moves the sandbox the agent drops the record).
            fenced_record = record(first, uids[always])
        if _lost(cluster.status(always), first.node):
            lost_after = time.monotonic() - cut
            break
        assert pid_alive(vmm[never]), "a Never sandbox is never fenced"
        time.sleep(0.1)
    assert fenced_after is not None, (
        "the Always sandbox's VM still ran when the operator declared its node lost"
    )
    assert fenced_after < lost_after
    assert fenced_after > GRACE / 2, f"fenced after {fenced_after:.1f}s: before the agent was cut off long"
    assert fenced_record is not None and fenced_record["fenced_at"], fenced_record
    assert pid_alive(vmm[never])

    # The operator runs the Always sandbox on the other node; it runs there once, and nowhere else.
    moved = wait_for(
        "the Always sandbox to run on the second node",
        lambda: (
            (s := cluster.status(always)).get("phase") == "Running" and s.get("nodeName") == second.node and s
        ),
        timeout=60,
    )
    assert moved["restartCount"] >= 1
    assert runs(second, uids[always]) == 1
    assert cluster.status(never)["reason"] == "NodeLost"

    kube.clear_faults()  # the partition heals
    status = wait_for(
        "the Never sandbox to be reported Running again",
        lambda: (s := cluster.status(never)).get("phase") == "Running" and s,
        timeout=60,
    )
    assert status["vm"]["vmmPID"] == vmm[never] and pid_alive(vmm[never]), "the same VM, never restarted"
    assert runs(first, uids[never]) == 1
    wait_for(
        "the first agent to drop the moved sandbox",
        lambda: record(first, uids[always]) is None and len(containers_left(first.runtime_root)) == 1,
        timeout=30,
    )
    assert any("fencing" in str(line.get("msg")) for line in first.log_lines() if line.get("name") == always)
