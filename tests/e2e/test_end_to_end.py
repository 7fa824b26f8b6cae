"""The whole path with real processes: operator + node agents + runtime, against the real CRD API server.

Nothing here schedules by hand: sandboxes are created unscheduled, the operator process places
them, the agent processes run them (process backend, or the Cloud Hypervisor stand-in).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.chart.helm import Helm
from tests.chart.live_rbac import chart_rbac
from tests.e2e.processes import QUICK_OPERATOR, OperatorProcess, running_operator
from tests.node_agent.support import (
    AgentProcess,
    Cluster,
    MakeAgent,
    Registry,
    containers_left,
    unique,
    wait_for,
)
from tests.operator.harness import without_stale_nodes
from vmsandbox.api.constants import AGENT_FINALIZER, NODE_LABEL, OPERATOR_FINALIZER
from vmsandbox.cli import main as cli
from vmsandbox.devcluster.cluster import LocalCluster

pytestmark = pytest.mark.kube

SETTINGS = {**QUICK_OPERATOR, "allowed_hypervisors": "process,cloud-hypervisor", "node_lost_grace_seconds": 9}


@pytest.fixture
def chart_identities(helm: Helm, kube: LocalCluster, kube_namespace: str) -> Iterator[tuple[Path, Path]]:
    """Kubeconfigs of the chart's operator and agent service accounts (release namespace: the
    test's), with the chart's RBAC installed: the front enforces it on every call they make."""
    users = [f"system:serviceaccount:{kube_namespace}:vmsandbox-{who}" for who in ("operator", "agent")]
    mark = len(kube.requests_made())
    with chart_rbac(kube, helm, kube_namespace):
        yield kube.kubeconfig_for(users[0]), kube.kubeconfig_for(users[1])
    refused = [r for r in kube.requests_made(since=mark) if r.user in users and r.status == 403]
    assert not refused, f"calls the chart's RBAC refused: {refused}"


@pytest.fixture
def make_agent(chart_identities: tuple[Path, Path], make_agent: MakeAgent) -> MakeAgent:
    """The node agent tests' agents, as the chart's agent service account (set up after, and
    stopped before, the chart's RBAC)."""

    def make(start: bool = True, node: str | None = None, **env: str) -> AgentProcess:
        return make_agent(start, node, VMSANDBOX_AGENT_KUBECONFIG=str(chart_identities[1]), **env)

    return make


@pytest.fixture
def operator(
    kube: LocalCluster, kube_namespace: str, tmp_path: Path, chart_identities: tuple[Path, Path]
) -> Iterator[OperatorProcess]:
    with running_operator(kube, kube_namespace, tmp_path, chart_identities[0], **SETTINGS) as op:
        yield op


class PhaseRecorder:
    """Every phase a sandbox passes through, from a watch (polling could miss short phases)."""

    def __init__(self, kube: LocalCluster, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.phases: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path = f"/apis/vmsandbox.io/v1alpha1/namespaces/{self.namespace}/vmsandboxes"
        while not self._stop.is_set():
            try:
                rv = self.kube.http("GET", path).json()["metadata"]["resourceVersion"]
                resp = self.kube.http(
                    "GET",
                    path,
                    params={"watch": "true", "resourceVersion": rv},
                    stream=True,
                    timeout=(5, None),
                )
                for line in resp.iter_lines():
                    if self._stop.is_set():
                        return
                    if line:
                        obj = json.loads(line).get("object") or {}
                        phase = (obj.get("status") or {}).get("phase")
                        seen = self.phases.setdefault(obj["metadata"]["name"], [])
                        if phase and (not seen or seen[-1] != phase):
                            seen.append(phase)
            except (requests.RequestException, ValueError, KeyError):
                continue

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.parametrize("hypervisor", ["process", "cloud-hypervisor"])
def test_apply_runs_to_succeeded_logs_then_delete_leaves_nothing(
    kube: LocalCluster,
    operator: OperatorProcess,
    make_agent: MakeAgent,
    cluster: Cluster,
    registry: Registry,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    hypervisor: str,
) -> None:
    agent = make_agent()
    recorder = PhaseRecorder(kube, cluster.namespace)
    name = unique("e2e")
    manifest = registry.manifest(
        tmp_path / "sandbox.yaml",
        name,
        ["sh", "-c", "echo hello from the sandbox; exit 3"],
        hypervisor=hypervisor,
        resources={"vcpus": 1, "memoryMiB": 256},
    )
    cfg = ["--kubeconfig", str(kube.kubeconfig_path)]
    try:
        assert cli([*cfg, "apply", "-f", str(manifest), "-n", cluster.namespace]) == 0
        status = cluster.wait_phase(name, "Succeeded", "Failed", timeout=90)
        wait_for(
            "watch caught up", lambda: (recorder.phases.get(name) or [""])[-1] == status["phase"], timeout=5
        )
    finally:
        recorder.stop()
    assert status["phase"] == "Failed" and status["container"]["exitCode"] == 3  # the container's own code
    assert recorder.phases[name][:1] == ["Scheduled"] or recorder.phases[name][:2] == ["Pending", "Scheduled"]
    order = [p for p in recorder.phases[name] if p != "Pending"]
    assert order == ["Scheduled", "Creating", "Running", "Failed"], recorder.phases[name]
    assert status["nodeName"] == agent.node and status["hypervisor"] == hypervisor
    assert status["bootTimings"]["schedule"] >= 0 and status["bootTimings"]["total"] > 0
    obj = cluster.get(name)
    assert obj is not None
    assert obj["metadata"]["labels"][NODE_LABEL] == agent.node
    assert set(obj["metadata"]["finalizers"]) == {OPERATOR_FINALIZER, AGENT_FINALIZER}

    capsys.readouterr()
    assert cli([*cfg, "logs", name, "-n", cluster.namespace]) == 0
    assert capsys.readouterr().out == "hello from the sandbox\n"
    assert cli([*cfg, "get", "-n", cluster.namespace]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(name))
    assert row.split()[1:4] == ["Failed", agent.node, hypervisor], writers(kube, name)

    assert cli([*cfg, "delete", name, "-n", cluster.namespace, "--wait", "--timeout", "30"]) == 0
    assert cluster.get(name) is None  # both finalizers were released
    assert containers_left(agent.runtime_root) == []  # no VM, no container
    assert not list((agent.state_dir / "sandboxes").glob(f"*{name}*"))  # no state directory
    reasons = [e["reason"] for e in cluster.events(name)]
    assert "Scheduled" in reasons and "Started" in reasons


def writers(kube: LocalCluster, name: str) -> str:
    """Who wrote the sandbox, in order (for failure messages: a phase going backwards names its writer)."""
    return "\n".join(
        f"{rec.time:.3f} {rec.method} {rec.subresource or '-'} {rec.user_agent} {rec.status}"
        for rec in kube.requests_made()
        if rec.name == name and rec.method in ("PATCH", "PUT", "POST")
    )


def _label_node(kube: LocalCluster, node: str, labels: dict[str, str], taints: list[dict[str, str]]) -> None:
    body: dict[str, Any] = {"metadata": {"labels": labels}, "spec": {"taints": taints}}
    resp = kube.http(
        "PATCH", f"/api/v1/nodes/{node}", json=body, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text


def test_three_agents_selector_taints_capacity(
    kube: LocalCluster, operator: OperatorProcess, make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    # Capacities differ by what each agent keeps back for the host.
    small = make_agent(VMSANDBOX_AGENT_RESERVE_VCPUS="0", VMSANDBOX_AGENT_RESERVE_MEMORY_MIB="0")
    ssd = make_agent(VMSANDBOX_AGENT_RESERVE_VCPUS="0", VMSANDBOX_AGENT_RESERVE_MEMORY_MIB="0")
    gpu = make_agent(VMSANDBOX_AGENT_RESERVE_VCPUS="0", VMSANDBOX_AGENT_RESERVE_MEMORY_MIB="0")
    _label_node(kube, ssd.node, {"disk": "ssd"}, [])
    _label_node(kube, gpu.node, {"accel": "gpu"}, [{"key": "gpu", "value": "true", "effect": "NoSchedule"}])
    _label_node(kube, small.node, {"size": "small"}, [])
    image = registry.busybox
    hold = {"image": image, "command": ["sleep", "300"], "hypervisor": "process"}

    cluster.create_sandbox("on-ssd", {**hold, "nodeSelector": {"disk": "ssd"}})
    toleration = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cluster.create_sandbox("on-gpu", {**hold, "tolerations": toleration, "nodeSelector": {"accel": "gpu"}})
    assert cluster.wait_phase("on-ssd", "Running")["nodeName"] == ssd.node
    assert cluster.wait_phase("on-gpu", "Running")["nodeName"] == gpu.node

    # Fill the ssd node's vCPUs, then one more: unschedulable with a reason per node.
    vcpus = json.loads(cluster.node(ssd.node)["metadata"]["annotations"]["vmsandbox.io/capacity"])["vcpus"]
    if vcpus > 1:
        cluster.create_sandbox(
            "fill", {**hold, "nodeSelector": {"disk": "ssd"}, "resources": {"vcpus": vcpus - 1}}
        )
        cluster.wait_phase("fill", "Running")
    cluster.create_sandbox("waits", {**hold, "nodeSelector": {"disk": "ssd"}})
    every_node = (
        "1 node: insufficient vcpus; 1 node: node selector mismatch; "
        "1 node: node selector mismatch, taint gpu=true"
    )
    # The message is recomputed at each retry: on a loaded machine one attempt may have found
    # an agent's heartbeat late (that node then reads "agent not ready", which is dropped).
    pending = wait_for(
        "Unschedulable with a reason for each live node",
        lambda: (
            (s := cluster.status("waits")).get("reason") == "Unschedulable"
            and without_stale_nodes(s.get("message", "")) == every_node
            and s
        ),
    )
    assert pending["phase"] == "Pending"
    assert without_stale_nodes(pending["message"]) == every_node
    # The untolerated taint alone keeps a plain sandbox off the gpu node; it goes to small.
    cluster.create_sandbox("plain", {**hold, "nodeSelector": {"size": "small"}})
    assert cluster.wait_phase("plain", "Running")["nodeName"] == small.node

    cluster.delete("on-ssd")  # capacity freed: the waiting one is placed there
    assert cluster.wait_phase("waits", "Running", timeout=60)["nodeName"] == ssd.node


def test_node_loss_reschedules_and_the_returning_agent_tears_down(
    kube: LocalCluster, operator: OperatorProcess, make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    # This machine has 2 CPUs, so a real agent offers at most 2 one-vCPU sandboxes; the 5-sandbox
    # variant of this test runs with fake agents in tests/operator/test_operator_kube.py.
    everything = {"VMSANDBOX_AGENT_RESERVE_VCPUS": "0", "VMSANDBOX_AGENT_RESERVE_MEMORY_MIB": "0"}
    first = make_agent(**everything)
    _label_node(kube, first.node, {"pool": "first"}, [])
    image = registry.busybox
    vcpus = json.loads(cluster.node(first.node)["metadata"]["annotations"]["vmsandbox.io/capacity"])["vcpus"]
    names = [f"lost-{i}" for i in range(min(vcpus, 5))]
    assert len(names) >= 2
    for i, name in enumerate(names):
        policy = "Never" if i == 0 else "OnFailure"
        spec = {"image": image, "command": ["sleep", "300"], "hypervisor": "process", "restartPolicy": policy}
        cluster.create_sandbox(name, spec)
    for name in names:
        assert cluster.wait_phase(name, "Running", timeout=60)["nodeName"] == first.node
    assert len(containers_left(first.runtime_root)) == len(names)
    second = make_agent(**everything)

    first.kill()  # SIGKILL: its VMs keep running, its Lease stops being renewed
    wait_for("Unknown", lambda: cluster.status(names[0]).get("phase") == "Unknown", timeout=20)
    lost = cluster.wait_phase(names[0], "Failed", timeout=20)
    assert lost["reason"] == "NodeLost"
    for name in names[1:]:
        status = cluster.wait_phase(name, "Running", timeout=60)
        assert status["nodeName"] == second.node and status["restartCount"] >= 1
    never = cluster.get(names[0])
    assert never is not None and never["metadata"]["labels"][NODE_LABEL] == first.node

    first.start()  # the agent comes back and finds VMs for sandboxes that are no longer its own
    wait_for(
        "stale VMs torn down",
        lambda: len(containers_left(first.runtime_root)) <= 1,  # only the Never one may stay
        timeout=60,
    )
    assert len(containers_left(second.runtime_root)) == len(names) - 1
