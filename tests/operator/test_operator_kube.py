"""The operator against the real CRD API server, with fake agents (Node + Lease) standing in for nodes."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
import requests

from tests.operator.factories import sandbox_obj
from tests.operator.harness import (
    SANDBOXES,
    FakeAgents,
    OperatorThread,
    create_sandbox,
    events_for,
    get_sandbox,
    leading_operator,
    list_sandboxes,
    operator_config,
    phase,
    scheduled,
    wait_events,
    wait_for,
    wait_phase,
    without_stale_nodes,
)
from vmsandbox.api.constants import AGENT_FINALIZER, NODE_LABEL, OPERATOR_FINALIZER
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.operator.config import OperatorConfig

pytestmark = pytest.mark.kube

MERGE = {"Content-Type": "application/merge-patch+json"}


def run_operator(
    kube: LocalCluster, namespace: str, **overrides: Any
) -> AbstractContextManager[OperatorThread]:
    return leading_operator(operator_config(namespace, **overrides), kube.kubeconfig_path)


def set_status(kube: LocalCluster, ns: str, name: str, **status: Any) -> None:
    path = SANDBOXES.format(ns=ns) + f"/{name}/status"
    resp = kube.http("PATCH", path, json={"status": status}, headers=MERGE)
    assert resp.status_code == 200, resp.text


def set_finalizers(kube: LocalCluster, ns: str, name: str, finalizers: list[str]) -> None:
    path = SANDBOXES.format(ns=ns) + f"/{name}"
    resp = kube.http("PATCH", path, json={"metadata": {"finalizers": finalizers}}, headers=MERGE)
    assert resp.status_code == 200, resp.text


def running_once_scheduled(kube: LocalCluster, ns: str, names: Iterable[str]) -> None:
    """Each sandbox, once placed, reported Running as its agent would."""
    for name in names:
        wait_for("scheduled", lambda n=name: scheduled(kube, ns, n))
        set_status(kube, ns, name, phase="Running")


def test_placement_is_recorded_with_label_finalizer_status_and_event(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    agents.add("rec-n1", vcpus=4, memory=4096)
    with run_operator(kube, ns):
        create_sandbox(kube, ns, sandbox_obj("hello"))
        obj = wait_for("Scheduled", lambda: scheduled(kube, ns, "hello"))
    meta, status = obj["metadata"], obj["status"]
    assert meta["labels"][NODE_LABEL] == "rec-n1" == status["nodeName"]
    assert meta["finalizers"] == [OPERATOR_FINALIZER]
    cond = next(c for c in status["conditions"] if c["type"] == "Scheduled")
    assert cond["status"] == "True" and cond["reason"] == "Scheduled"
    assert status["bootTimings"]["schedule"] >= 0
    assert status["hypervisor"] == "cloud-hypervisor"
    assert not any(k.startswith("kopf.") for k in meta.get("annotations") or {}), "kopf left its marks"
    assert "created" not in status and "kopf" not in status, "a handler return value landed in status"
    events = wait_for("Scheduled event", lambda: events_for(kube, ns, "hello"), timeout=5)
    assert [(e["reason"], e["type"]) for e in events] == [("Scheduled", "Normal")]
    assert "rec-n1" in events[0]["message"]


def test_invalid_sandbox_fails_naming_the_field_and_is_never_scheduled(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    agents.add("inv-n1", hypervisors=("cloud-hypervisor", "process"))
    with run_operator(kube, ns):
        create_sandbox(kube, ns, sandbox_obj("bad", hypervisor="process"))
        wait_phase(kube, ns, "bad", "Failed", "Failed")
        time.sleep(1.0)
        obj = get_sandbox(kube, ns, "bad")
    assert obj is not None
    assert obj["status"]["reason"] == "Invalid"
    assert obj["status"]["message"].startswith("spec.hypervisor:")
    assert NODE_LABEL not in (obj["metadata"].get("labels") or {})
    assert OPERATOR_FINALIZER not in (obj["metadata"].get("finalizers") or [])
    reasons = [e["reason"] for e in wait_events(kube, ns, "bad", "Invalid")]
    assert reasons == ["Invalid"]


def test_three_nodes_selector_taints_capacity_and_freed_capacity(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    agents.add("tri-ssd", vcpus=2, memory=2048, labels={"disk": "ssd"})
    agents.add(
        "tri-gpu", vcpus=8, memory=8192, taints=[{"key": "gpu", "value": "true", "effect": "NoSchedule"}]
    )
    agents.add("tri-qemu", vcpus=4, memory=1024, hypervisors=("qemu",), default="qemu")
    gpu_toleration = [{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    with run_operator(kube, ns):
        create_sandbox(kube, ns, sandbox_obj("ssd", nodeSelector={"disk": "ssd"}, vcpus=2, memory=1024))
        create_sandbox(
            kube,
            ns,
            sandbox_obj(
                "gpu", tolerations=gpu_toleration, nodeSelector={"kubernetes.io/hostname": "tri-gpu"}
            ),
        )
        create_sandbox(kube, ns, sandbox_obj("vmm", hypervisor="qemu"))
        for name, node in (("ssd", "tri-ssd"), ("gpu", "tri-gpu"), ("vmm", "tri-qemu")):
            obj = wait_for(f"{name} scheduled", lambda n=name: scheduled(kube, ns, n))
            assert obj["status"]["nodeName"] == node, name
        # tri-ssd is now full (2 vCPUs used): another ssd sandbox waits, saying why per node.
        create_sandbox(kube, ns, sandbox_obj("ssd2", nodeSelector={"disk": "ssd"}, vcpus=1, memory=512))
        pending = wait_for(
            "Unschedulable",
            lambda: (
                (get_sandbox(kube, ns, "ssd2") or {}).get("status", {}).get("reason") == "Unschedulable"
                and get_sandbox(kube, ns, "ssd2")
            ),
        )
        assert pending["status"]["phase"] == "Pending"
        assert pending["status"]["message"].startswith("0/")
        assert without_stale_nodes(pending["status"]["message"]) == (
            "1 node: insufficient vcpus; 1 node: node selector mismatch; "
            "1 node: node selector mismatch, taint gpu=true"
        )
        cond = next(c for c in pending["status"]["conditions"] if c["type"] == "Scheduled")
        assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
        assert "FailedScheduling" in [e["reason"] for e in wait_events(kube, ns, "ssd2", "FailedScheduling")]
        # The first ssd sandbox finishing frees its capacity: the waiting one is placed.
        set_status(kube, ns, "ssd", phase="Succeeded")
        obj = wait_for("ssd2 scheduled after capacity freed", lambda: scheduled(kube, ns, "ssd2"), timeout=10)
        assert obj["status"]["nodeName"] == "tri-ssd"


def test_a_burst_of_100_never_overcommits(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    capacity = {"burst-a": 4, "burst-b": 8, "burst-c": 12}  # room for 24 one-vCPU sandboxes
    for name, vcpus in capacity.items():
        agents.add(name, vcpus=vcpus, memory=vcpus * 512)
    with run_operator(kube, ns):
        for i in range(100):
            create_sandbox(kube, ns, sandbox_obj(f"b{i:03d}", vcpus=1, memory=512))

        def settled() -> list[dict[str, Any]] | None:
            items = list_sandboxes(kube, ns)
            done = [
                i
                for i in items
                if phase(i) == "Scheduled" or (i.get("status") or {}).get("reason") == "Unschedulable"
            ]
            return items if len(done) == 100 else None

        items = wait_for("all 100 decided", settled, timeout=60)
    placed = Counter(i["status"]["nodeName"] for i in items if phase(i) == "Scheduled")
    assert placed == capacity, "every node filled exactly to its capacity, none beyond"
    for item in items:
        if phase(item) == "Scheduled":
            assert item["metadata"]["labels"][NODE_LABEL] == item["status"]["nodeName"]


def test_node_loss_unknown_then_nodelost_then_rescheduled_by_policy(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    agents.add("loss-a", vcpus=8, memory=8192, labels={"pool": "first"})
    with run_operator(kube, ns):
        policies = ["Never", "OnFailure", "Always", "OnFailure", "Never"]
        for i, policy in enumerate(policies):
            create_sandbox(kube, ns, sandbox_obj(f"l{i}", restartPolicy=policy))
        running_once_scheduled(kube, ns, [f"l{i}" for i in range(5)])
        agents.add("loss-b", vcpus=8, memory=8192)
        agents.kill("loss-a")  # its agent stops renewing the Lease
        wait_for("Unknown", lambda: phase(get_sandbox(kube, ns, "l0")) == "Unknown", timeout=10)
        assert get_sandbox(kube, ns, "l0")["status"]["reason"] == "NodeUnreachable"  # type: ignore[index]
        wait_for(
            "NodeLost",
            lambda: (get_sandbox(kube, ns, "l0") or {}).get("status", {}).get("reason") == "NodeLost",
            timeout=10,
        )

        def moved(i: int) -> dict[str, Any] | None:
            obj = get_sandbox(kube, ns, f"l{i}")
            return obj if obj and (obj.get("status") or {}).get("nodeName") == "loss-b" else None

        for i, policy in enumerate(policies):
            if policy == "Never":
                obj = get_sandbox(kube, ns, f"l{i}")
                assert obj is not None and phase(obj) == "Failed" and obj["status"]["reason"] == "NodeLost"
                assert obj["metadata"]["labels"][NODE_LABEL] == "loss-a"
            else:
                obj = wait_for(f"l{i} rescheduled", lambda i=i: moved(i), timeout=10)
                assert obj["metadata"]["labels"][NODE_LABEL] == "loss-b"
                assert obj["status"]["restartCount"] == 1
                assert phase(obj) == "Scheduled"
        reasons = [
            e["reason"] for e in wait_events(kube, ns, "l1", "NodeUnreachable", "NodeLost", "Rescheduled")
        ]
        assert {"NodeUnreachable", "NodeLost", "Rescheduled"} <= set(reasons)


@contextmanager
def _placed_and_taken_by_the_agent(
    kube: LocalCluster, ns: str, agents: FakeAgents, node: str, name: str
) -> Iterator[None]:
    """A running operator and one node, where a new sandbox, once scheduled, carries the agent's
    finalizer too, as after its pickup."""
    agents.add(node)
    with run_operator(kube, ns):
        create_sandbox(kube, ns, sandbox_obj(name))
        obj = wait_for("scheduled", lambda: scheduled(kube, ns, name))
        set_finalizers(kube, ns, name, [*obj["metadata"]["finalizers"], AGENT_FINALIZER])
        yield


def test_deletion_waits_for_the_agent_finalizer(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    with _placed_and_taken_by_the_agent(kube, ns, agents, "del-a", "d1"):
        kube.http("DELETE", SANDBOXES.format(ns=ns) + "/d1")
        time.sleep(1.5)
        obj = get_sandbox(kube, ns, "d1")
        assert obj is not None and obj["metadata"]["finalizers"] == [OPERATOR_FINALIZER, AGENT_FINALIZER]
        set_finalizers(kube, ns, "d1", [OPERATOR_FINALIZER])  # the agent tore the VM down
        wait_for("gone", lambda: get_sandbox(kube, ns, "d1") is None, timeout=10)


def test_deletion_on_a_lost_node_releases_both_finalizers(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    with _placed_and_taken_by_the_agent(kube, ns, agents, "dlost-a", "d2"):
        agents.kill("dlost-a")
        kube.http("DELETE", SANDBOXES.format(ns=ns) + "/d2")
        wait_for("gone after the grace", lambda: get_sandbox(kube, ns, "d2") is None, timeout=15)
        assert "ForceReleased" in [e["reason"] for e in wait_events(kube, ns, "d2", "ForceReleased")]


def test_ttl_after_finished_deletes(kube: LocalCluster, kube_namespace: str, agents: FakeAgents) -> None:
    ns = kube_namespace
    agents.add("ttl-a")
    with run_operator(kube, ns):
        create_sandbox(kube, ns, sandbox_obj("t1", ttlSecondsAfterFinished=2))
        create_sandbox(kube, ns, sandbox_obj("t2"))
        for name in ("t1", "t2"):
            wait_for("scheduled", lambda n=name: scheduled(kube, ns, n))
            set_status(kube, ns, name, phase="Succeeded", container={"exitCode": 0, "finishedAt": _now()})
        wait_for("t1 deleted by TTL", lambda: get_sandbox(kube, ns, "t1") is None, timeout=10)
        assert get_sandbox(kube, ns, "t2") is not None


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_PHASE = 'vmsandbox_operator_sandboxes{phase="'


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of each sample in a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_and_liveness(kube: LocalCluster, kube_namespace: str, agents: FakeAgents) -> None:
    ns = kube_namespace
    agents.add("met-a", vcpus=1, memory=1024)
    with run_operator(kube, ns) as op:
        create_sandbox(kube, ns, sandbox_obj("m1"))
        create_sandbox(kube, ns, sandbox_obj("m2"))  # no room: unschedulable
        wait_for("m1 scheduled", lambda: scheduled(kube, ns, "m1"))
        wait_for(
            "m2 unschedulable", lambda: (get_sandbox(kube, ns, "m2") or {}).get("status", {}).get("reason")
        )

        def settled() -> dict[str, float] | None:
            # The operator watches every namespace, where earlier tests leave sandboxes: the
            # gauges hold at least this test's two (m1 Scheduled, m2 Pending and unschedulable).
            text = requests.get(f"http://127.0.0.1:{op.config.metrics_port}/metrics", timeout=5).text
            gauges = _samples(text)
            ours = {f'{_PHASE}Scheduled"}}': 1.0, f'{_PHASE}Pending"}}': 1.0}
            return gauges if all(gauges.get(k, 0.0) >= v for k, v in ours.items()) else None

        gauges = wait_for("the phase gauges to count this test's sandboxes", settled)
        text = requests.get(f"http://127.0.0.1:{op.config.metrics_port}/metrics", timeout=5).text
        health = requests.get(str(op.config.liveness_endpoint), timeout=5)
    assert gauges["vmsandbox_operator_leader"] == 1.0
    assert gauges["vmsandbox_operator_scheduling_latency_seconds_count"] >= 1.0
    assert gauges["vmsandbox_operator_unschedulable_sandboxes"] >= 1.0
    assert "vmsandbox_operator_reconcile_errors_total" not in text or "reconcile_errors_total{" not in text
    assert health.status_code == 200 and health.json().get("leader") is True


def admission_review(obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0c8f7a4e-1111-2222-3333-444455556666",
            "kind": {"group": "vmsandbox.io", "version": "v1alpha1", "kind": "VMSandbox"},
            "resource": {"group": "vmsandbox.io", "version": "v1alpha1", "resource": "vmsandboxes"},
            "requestKind": {"group": "vmsandbox.io", "version": "v1alpha1", "kind": "VMSandbox"},
            "requestResource": {"group": "vmsandbox.io", "version": "v1alpha1", "resource": "vmsandboxes"},
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {"username": "tester", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": None,
        },
    }


def test_validating_webhook_answers_admission_reviews(kube: LocalCluster, kube_namespace: str) -> None:
    from tests.operator.harness import free_port

    port = free_port()
    op = run_operator(kube, kube_namespace, webhook=True, webhook_host="127.0.0.1", webhook_port=port)
    url = f"http://127.0.0.1:{port}/validate-vmsandbox"
    with op:
        wait_for("webhook listening", lambda: _accepts(port), timeout=15)
        good = requests.post(url, json=admission_review(sandbox_obj("ok")), timeout=10).json()
        bad_obj = sandbox_obj(
            "nope", hypervisor="process", tolerations=[{"key": "a", "operator": "Exists", "value": "x"}]
        )
        bad = requests.post(url, json=admission_review(bad_obj), timeout=10).json()
        update = requests.post(url, json=admission_review(bad_obj, "UPDATE"), timeout=10).json()
    assert good["response"]["allowed"] is True
    assert good["response"]["uid"] == "0c8f7a4e-1111-2222-3333-444455556666"
    assert bad["response"]["allowed"] is False
    message = bad["response"]["status"]["message"]
    assert "spec.hypervisor" in message and "spec.tolerations[0].value" in message
    assert bad["response"]["status"]["code"] == 422
    assert update["response"]["allowed"] is False


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_webhook_is_off_by_default() -> None:
    assert OperatorConfig().webhook is False
    json.dumps(admission_review(sandbox_obj("x")))  # the review shape serialises
