"""Only the operator decides placements: a tenant's own ``vmsandbox.io/node`` label is refused.

The local control plane has no admission policies, so this is the operator's re-check and the
agent's own admission at work (the chart's policy is tested in test_admission_policies.py).
The operator runs as the chart's service account with the chart's RBAC enforced; the tenant
has only create/get/list/delete on vmsandboxes in its namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.chart.helm import Helm
from tests.chart.live_rbac import chart_rbac
from tests.node_agent.conftest import allow_process_backend
from tests.operator import harness
from tests.security.agent import running_agent
from tests.security.tenant import SANDBOXES, grant_tenant, sandbox
from vmsandbox.api.node import NodeCapacity
from vmsandbox.api.reasons import StatusReason
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.node_agent.admission import LocalAdmission, OutOfCapacity

pytestmark = pytest.mark.kube


LABEL_FIELD = 'metadata.labels["vmsandbox.io/node"]'


@pytest.fixture
def operator(helm: Helm, kube: LocalCluster, kube_namespace: str) -> Iterator[harness.FakeAgents]:
    """The operator as the chart's service account, and two fake agents: pool=a and pool=b."""
    user = f"system:serviceaccount:{kube_namespace}:vmsandbox-operator"
    agents = harness.FakeAgents(kube, kube_namespace)
    suffix = uuid.uuid4().hex[:6]
    try:
        agents.add(f"a-{suffix}", labels={"pool": "a"})
        agents.add(f"b-{suffix}", labels={"pool": "b"})
        config = harness.operator_config(kube_namespace)
        with (
            chart_rbac(kube, helm, kube_namespace),
            harness.leading_operator(config, kube.kubeconfig_for(user)),
        ):
            yield agents
    finally:
        agents.close()


def _tenant_creates(kube: LocalCluster, namespace: str, tenant: str, obj: dict[str, object]) -> None:
    resp = kube.http(
        "POST", SANDBOXES.format(ns=namespace), json=obj, headers={"Authorization": f"Bearer {tenant}"}
    )
    assert resp.status_code == 201, resp.text


def test_tenant_label_on_a_node_its_selector_excludes_is_refused(
    operator: harness.FakeAgents, kube: LocalCluster, kube_namespace: str
) -> None:
    node_a, node_b = sorted(operator.nodes)
    tenant = f"tenant-{uuid.uuid4().hex[:6]}"
    grant_tenant(kube, kube_namespace, tenant)
    attack = sandbox("attack", nodeSelector={"pool": "a"})
    attack["metadata"]["labels"] = {"vmsandbox.io/node": node_b}
    _tenant_creates(kube, kube_namespace, tenant, attack)
    _tenant_creates(kube, kube_namespace, tenant, sandbox("honest", nodeSelector={"pool": "a"}))

    def settled(name: str) -> dict[str, object] | None:
        return harness.in_phase(kube, kube_namespace, name, "Failed", "Scheduled")

    refused = harness.wait_for("the refusal", lambda: settled("attack"))
    status = refused["status"]
    assert status["phase"] == "Failed" and status["reason"] == StatusReason.INVALID, status
    assert status["message"].startswith(f"{LABEL_FIELD}: node {node_b!r} was not chosen by the operator")
    assert "node selector mismatch" in status["message"]
    assert not status.get("nodeName"), "the placement was completed"
    honest = harness.wait_for("the honest placement", lambda: settled("honest"))
    assert honest["status"]["phase"] == "Scheduled" and honest["status"]["nodeName"] == node_a
    events = harness.wait_events(kube, kube_namespace, "attack", "Invalid")
    assert any(e.get("reason") == "Invalid" and LABEL_FIELD in e.get("message", "") for e in events), events


def test_tenant_label_on_an_unknown_node_is_refused(
    operator: harness.FakeAgents, kube: LocalCluster, kube_namespace: str
) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:6]}"
    grant_tenant(kube, kube_namespace, tenant)
    attack = sandbox("nowhere")
    attack["metadata"]["labels"] = {"vmsandbox.io/node": "no-such-node"}
    _tenant_creates(kube, kube_namespace, tenant, attack)
    obj = harness.wait_phase(kube, kube_namespace, "nowhere", "Failed", "the refusal")
    assert obj["status"]["reason"] == StatusReason.INVALID
    assert obj["status"]["message"] == (
        f"{LABEL_FIELD}: node 'no-such-node' was not chosen by the operator and cannot take this "
        "sandbox (no node with a vmsandbox agent has this name)"
    )


def test_a_label_moved_after_placement_is_refused(
    operator: harness.FakeAgents, kube: LocalCluster, kube_namespace: str
) -> None:
    """Where no admission policy stops it, whoever relabels a placed sandbox (here the admin) fails it."""
    node_a, node_b = sorted(operator.nodes)
    harness.create_sandbox(kube, kube_namespace, sandbox("moved", nodeSelector={"pool": "a"}))
    harness.wait_for(
        "the placement",
        lambda: harness.phase(harness.get_sandbox(kube, kube_namespace, "moved")) == "Scheduled",
    )
    path = SANDBOXES.format(ns=kube_namespace) + "/moved"
    patch = {"metadata": {"labels": {"vmsandbox.io/node": node_b}}}
    resp = kube.http("PATCH", path, json=patch, headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status_code == 200, resp.text
    obj = harness.wait_phase(kube, kube_namespace, "moved", "Failed", "the refusal")
    assert obj["status"]["reason"] == StatusReason.INVALID
    assert obj["status"]["message"] == (
        f"{LABEL_FIELD}: {node_b!r} is not the node the operator placed the sandbox on ({node_a!r})"
    )


def test_local_admission_holds_until_release() -> None:
    admission = LocalAdmission(NodeCapacity(vcpus=2, memory_mib=1024), "n1")
    admission.admit("a", 1, 512)
    admission.admit("a", 1, 512)  # the same sandbox again holds nothing more
    admission.admit("b", 1, 512)
    with pytest.raises(OutOfCapacity) as caught:
        admission.admit("c", 1, 128)
    assert caught.value.reason == StatusReason.OUT_OF_CAPACITY
    assert (
        str(caught.value.detail)
        == "node n1 cannot hold this sandbox: 1 vCPUs asked, 0 of 2 free; 128 MiB asked, 0 of 1024 MiB free"
    )
    admission.release("a")
    admission.admit("c", 1, 128)
    admission.hold("adopted", 4, 4096)  # a VM found running after a restart counts, fit or not
    with pytest.raises(OutOfCapacity):
        admission.admit("d", 1, 128)


def test_agent_waits_for_the_operators_record_and_refuses_to_overcommit(
    kube: LocalCluster, kube_namespace: str
) -> None:
    """A label alone starts nothing; a recorded placement larger than the node fails OutOfCapacity."""
    allow_process_backend(kube, kube_namespace)
    with running_agent(kube, kube_namespace) as (cluster, node, workdir):
        spec = {"image": "127.0.0.1:9/absent/image:1", "imagePullPolicy": "Never"}
        labelled = {
            "apiVersion": "vmsandbox.io/v1alpha1",
            "kind": "VMSandbox",
            "spec": spec,
            "metadata": {"name": "label-only", "labels": {"vmsandbox.io/node": node}},
        }
        assert kube.http("POST", SANDBOXES.format(ns=kube_namespace), json=labelled).status_code == 201
        huge = {**spec, "resources": {"vcpus": 64, "memoryMiB": 262144}}
        cluster.create_sandbox("huge", huge, node=node)
        status = cluster.wait_phase("huge", "Failed", timeout=60)
        assert status["reason"] == StatusReason.OUT_OF_CAPACITY, status
        assert status["message"].startswith(f"admission: node {node} cannot hold this sandbox: 64 vCPUs"), (
            status
        )
        assert not any((workdir / "run").glob("*/state.json")), "a VM was started"
        # The label-only sandbox was never started: no status from the agent beyond its finalizer.
        label_only = cluster.get("label-only")
        assert label_only is not None
        assert (label_only.get("status") or {}).get("phase") in (None, "Pending"), label_only
