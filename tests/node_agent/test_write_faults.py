"""Status and finalizer writes that the API server fails (500, 429, 409) never decide a sandbox's fate.

Each write the agent makes (the finalizer, the status writes from Creating to the end, the
finalizer's removal) is failed at the front a few times; the VM is never torn down for it, a
restartPolicy Never sandbox never runs twice, and the status ends right. A run that ends while
its status cannot be written is recorded by the agent, survives an agent restart and is
reported once the API server takes writes again.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from tests.node_agent.resilience import OwnAgent, record, runs, sandbox_path, teardowns
from tests.node_agent.support import Cluster, Registry, containers_left, pid_alive, unique, wait_for
from vmsandbox.devcluster import LocalCluster

pytestmark = pytest.mark.kube

#: Long enough to be seen Running: with 429s and Retry-After 1 s, the four failed status writes
#: before Running alone cost 1 + 1 + 1 + 1.6 s of back-off.
RUN = "echo run-marker; sleep 8; exit 3"


@pytest.mark.parametrize("code", [500, 429, 409])
def test_failed_writes_are_retried_and_tear_nothing_down(
    own_agent: OwnAgent, cluster: Cluster, registry: Registry, kube: LocalCluster, code: int
) -> None:
    agent, user = own_agent
    name = unique(f"w{code}")
    path = sandbox_path(cluster, name)
    retry_after = 1 if code == 429 else None
    # The finalizer patch, and the first status writes (Creating, Running), each fail first.
    kube.inject_fault(
        method="PATCH", path=f"{path}$", user=user, status=code, count=2, retryAfter=retry_after
    )
    kube.inject_fault(
        method="PUT", path=f"{path}/status$", user=user, status=code, count=4, retryAfter=retry_after
    )
    obj = cluster.create_sandbox(name, registry.sandbox(["sh", "-c", RUN]), node=agent.node)
    uid = obj["metadata"]["uid"]
    status = cluster.wait_phase(name, "Running", timeout=60)
    vmm = status["vm"]["vmmPID"]
    assert pid_alive(vmm)
    # The write of its end fails too.
    kube.inject_fault(
        method="PUT", path=f"{path}/status$", user=user, status=code, count=3, retryAfter=retry_after
    )
    status = cluster.wait_phase(name, "Failed", "Succeeded", timeout=60)
    assert status["phase"] == "Failed" and status["container"]["exitCode"] == 3, status
    assert status["reason"] == "Error"
    assert not kube.faults(), "every injected fault was met"
    assert runs(agent, uid) == 1, "a Never sandbox ran once"
    assert teardowns(agent, name) == ["VM torn down (the container ended)"], teardowns(agent, name)
    rec = record(agent, uid)
    assert rec is not None and rec["finished"]["exit_code"] == 3 and rec["finished"]["restart"] is False
    retried = [r for r in kube.requests_made() if r.user == user and r.name == name and r.status == code]
    assert len(retried) == 2 + 4 + 3, [(r.verb, r.subresource, r.status) for r in retried]

    # Removing the finalizer fails first, and the sandbox still goes.
    kube.inject_fault(
        method="PATCH", path=f"{path}$", user=user, status=code, count=2, retryAfter=retry_after
    )
    cluster.delete(name)
    cluster.wait_gone(name, timeout=30)
    assert not kube.faults()
    wait_for("the record to go", lambda: record(agent, uid) is None, timeout=10)
    assert runs(agent, uid) == 0  # its directory went with it


def test_an_end_recorded_while_writes_fail_survives_an_agent_restart(
    own_agent: OwnAgent, cluster: Cluster, registry: Registry, kube: LocalCluster
) -> None:
    agent, user = own_agent
    name = unique("ended")
    path = sandbox_path(cluster, name)
    obj = cluster.create_sandbox(
        name,
        registry.sandbox(["sh", "-c", "echo run-marker; sleep 3; exit 7"]),
        node=agent.node,
    )
    uid = obj["metadata"]["uid"]
    status = cluster.wait_phase(name, "Running", timeout=60)
    vmm = status["vm"]["vmmPID"]
    # From now on no status write of this sandbox gets through.
    kube.inject_fault(method="PUT", path=f"{path}/status$", user=user, status=503, count=None)
    finished = wait_for(
        "the agent to record the end", lambda: (record(agent, uid) or {}).get("finished"), timeout=30
    )
    assert finished["exit_code"] == 7 and finished["restart"] is False
    wait_for("the VM to be torn down", lambda: not pid_alive(vmm), timeout=15)
    assert cluster.status(name)["phase"] == "Running", "the API server has not heard of the end yet"

    agent.kill()
    agent.start(wait_ready=True)
    # Restarted, the agent reads the end from its record: it neither boots the sandbox again nor
    # forgets the exit code while its writes still fail.
    wait_for(
        "the restarted agent to try reporting the end",
        lambda: any(
            r.user == user and r.name == name and r.status == 503 for r in kube.requests_made()[-200:]
        ),
        timeout=30,
    )
    assert runs(agent, uid) == 1
    assert cluster.status(name)["phase"] == "Running"
    kube.clear_faults()
    status = cluster.wait_phase(name, "Failed", timeout=30)
    assert status["container"]["exitCode"] == 7 and status["reason"] == "Error"
    assert runs(agent, uid) == 1, "a Never sandbox ran once"
    assert not [t for t in teardowns(agent, name) if "container ended" not in t and "finishing" not in t]


@pytest.mark.parametrize("code", [500, 409])
def test_a_running_container_outlasts_its_status_writes_failing(
    own_agent: OwnAgent, cluster: Cluster, registry: Registry, kube: LocalCluster, code: int
) -> None:
    """Every status write fails until well after the container started: the VM stays up and the
    agent keeps the changes, which land (Creating and Running together) once writes pass."""
    agent, user = own_agent
    name = unique(f"held{code}")
    path = sandbox_path(cluster, name)
    kube.inject_fault(method="PUT", path=f"{path}/status$", user=user, status=code, count=None)
    obj = cluster.create_sandbox(
        name,
        registry.sandbox(["sh", "-c", "echo run-marker; exec sleep 600"]),
        node=agent.node,
    )
    uid = obj["metadata"]["uid"]
    wait_for(
        "the container to start", lambda: (record(agent, uid) or {}).get("container_started"), timeout=60
    )
    (cid,) = containers_left(agent.runtime_root)
    state = json.loads((agent.runtime_root / cid / "state.json").read_text())["state"]
    vmm = state["vm"]["vmm_pid"]
    time.sleep(5)  # writes keep failing meanwhile
    assert pid_alive(vmm) and cluster.status(name)["phase"] == "Scheduled"
    assert teardowns(agent, name) == []
    kube.clear_faults()
    status = cluster.wait_phase(name, "Running", timeout=60)
    assert status["vm"]["vmmPID"] == vmm and pid_alive(vmm), "the VM that started is the one reported"
    assert status["hypervisor"] == "process" and status["startTime"], "the Creating change was kept too"
    assert runs(agent, uid) == 1 and teardowns(agent, name) == []
    failed = [r for r in kube.requests_made() if r.user == user and r.name == name and r.status == code]
    assert len(failed) >= 3, "the writes were retried while they failed"


def test_the_image_is_pulled_while_the_finalizer_write_waits(
    own_agent: OwnAgent, cluster: Cluster, registry: Registry, kube: LocalCluster
) -> None:
    """The pull does not wait for the finalizer: with the finalizer's write held back by the server
    (429, retry after a second, twice), the image is in the cache before the write is taken, and
    the launch uses that pull instead of making another (a :latest tag is pulled Always)."""
    agent, user = own_agent
    name = unique("prefetch")
    path = sandbox_path(cluster, name)
    kube.inject_fault(method="PATCH", path=f"{path}$", user=user, status=429, count=2, retryAfter=1)
    spec = registry.sandbox(["sleep", "600"])
    assert spec["image"].endswith(":latest")
    cluster.create_sandbox(name, spec, node=agent.node)
    cluster.wait_phase(name, "Running", timeout=60)
    assert not kube.faults()
    finalizer = [
        r.time
        for r in kube.requests_made()
        if r.user == user and r.name == name and r.verb == "patch" and r.status == 200
    ]
    pulls = [
        datetime.fromisoformat(line["ts"]).timestamp()
        for line in agent.log_lines()
        if line.get("name") == name and line["msg"].startswith(f"pulled {spec['image']} ")
    ]
    assert len(pulls) == 1, "one pull: the launch took the one begun beside the finalizer"
    assert finalizer and pulls[0] < finalizer[0] - 1.0, (pulls, finalizer)
