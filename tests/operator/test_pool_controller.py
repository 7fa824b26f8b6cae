"""The pool controller and claim scheduling against the real API server and a real operator.

The node agents are fake here: a Node, its capacity annotation and a renewed Lease, as in the
other operator tests, plus the ``vmsandbox.io/pools`` Node annotation written by the test
exactly as an agent writes it (``{"<namespace>/<pool>": {"uid": ..., "ready": n}}``). Keeping
members ready and serving claims is the agent's side and is tested with the real agent there;
what is tested here is everything the operator does with a pool: shares, sums, placement.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.operator.factories import sandbox_obj
from tests.operator.harness import (
    FakeAgents,
    OperatorThread,
    create_sandbox,
    get_object,
    get_sandbox,
    leading_operator,
    operator_config,
    phase,
    wait_events,
    wait_for,
)
from vmsandbox.api.constants import NODE_LABEL, POOL_LABEL, POOLS_ANNOTATION
from vmsandbox.api.pool import PoolReport, render_pool_reports
from vmsandbox.devcluster import KubeBinariesUnavailable
from vmsandbox.devcluster.binaries import find_binaries
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.pytest_plugin import kube_required

pytestmark = pytest.mark.kube

MERGE = {"Content-Type": "application/merge-patch+json"}
POOLS = "/apis/vmsandbox.io/v1alpha1/namespaces/{ns}/vmsandboxpools"
SMALL = {"vcpus": 1, "memoryMiB": 256}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def operator(kube: LocalCluster, kube_namespace: str, agents: FakeAgents) -> Iterator[OperatorThread]:
    with leading_operator(operator_config(kube_namespace), kube.kubeconfig_path) as op:
        yield op


def create_pool(kube: LocalCluster, ns: str, name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("template", {"resources": SMALL})
    body = {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandboxPool",
        "metadata": {"name": name},
        "spec": spec,
    }
    resp = kube.http("POST", POOLS.format(ns=ns), json=body)
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


def get_pool(kube: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    return get_object(kube, POOLS.format(ns=ns) + f"/{name}")


def desired(kube: LocalCluster, ns: str, name: str) -> dict[str, int]:
    status = (get_pool(kube, ns, name) or {}).get("status") or {}
    return {n["name"]: n["desired"] for n in status.get("nodes") or [] if n["desired"]}


def wait_desired(kube: LocalCluster, ns: str, name: str, want: dict[str, int]) -> dict[str, Any]:
    wait_for(f"{name} shares {want}", lambda: desired(kube, ns, name) == want or None, timeout=20)
    obj = get_pool(kube, ns, name)
    assert obj is not None
    return obj


def report(kube: LocalCluster, node: str, reports: dict[str, PoolReport]) -> None:
    """What an agent does: publish its ready members in its Node's annotation."""
    body = {"metadata": {"annotations": {POOLS_ANNOTATION: render_pool_reports(reports)}}}
    resp = kube.http("PATCH", f"/api/v1/nodes/{node}", json=body, headers=MERGE)
    assert resp.status_code == 200, resp.text


def placed_on(kube: LocalCluster, ns: str, name: str) -> str | None:
    obj = get_sandbox(kube, ns, name)
    return (
        ((obj or {}).get("metadata") or {}).get("labels", {}).get(NODE_LABEL)
        if phase(obj) == "Scheduled"
        else None
    )


def metrics(op: OperatorThread) -> str:
    return requests.get(f"http://127.0.0.1:{op.config.metrics_port}/metrics", timeout=5).text


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def test_pool_of_four_spreads_over_two_nodes_and_sums_the_agents_reports(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents, operator: OperatorThread
) -> None:
    ns = kube_namespace
    agents.add("spread-a", "spread-b")
    created = create_pool(kube, ns, "four", replicas=4)
    obj = wait_desired(kube, ns, "four", {"spread-a": 2, "spread-b": 2})
    status = obj["status"]
    assert (status["replicas"], status["readyReplicas"]) == (4, 0)
    assert status["selector"] == f"{POOL_LABEL}=four"
    assert status["observedGeneration"] == 1
    assert (ready_condition(obj)["status"], ready_condition(obj)["reason"]) == ("False", "MembersStarting")

    uid = created["metadata"]["uid"]
    report(kube, "spread-a", {f"{ns}/four": PoolReport(uid=uid, ready=2)})
    report(
        kube,
        "spread-b",
        {f"{ns}/four": PoolReport(uid=uid, ready=1), f"{ns}/other": PoolReport(uid="x", ready=9)},
    )
    obj = wait_for(
        "readyReplicas 3",
        lambda: (o := get_pool(kube, ns, "four")) and o["status"].get("readyReplicas") == 3 and o,
    )
    assert {n["name"]: n["ready"] for n in obj["status"]["nodes"]} == {"spread-a": 2, "spread-b": 1}
    report(kube, "spread-b", {f"{ns}/four": PoolReport(uid=uid, ready=2)})
    obj = wait_for(
        "Ready True",
        lambda: (o := get_pool(kube, ns, "four")) and ready_condition(o)["status"] == "True" and o,
    )
    assert ready_condition(obj)["reason"] == "MembersReady"
    assert obj["status"]["readyReplicas"] == 4
    text = metrics(operator)
    assert f'vmsandbox_operator_pool_ready_members{{namespace="{ns}",pool="four"}} 4.0' in text
    assert f'vmsandbox_operator_pool_desired_members{{namespace="{ns}",pool="four"}} 4.0' in text

    # A report for a deleted namesake (another uid) is not counted.
    report(kube, "spread-a", {f"{ns}/four": PoolReport(uid="not-this-pool", ready=2)})
    wait_for(
        "stale report ignored", lambda: (get_pool(kube, ns, "four") or {})["status"]["readyReplicas"] == 2
    )


def test_node_selector_is_respected(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents, operator: OperatorThread
) -> None:
    ns = kube_namespace
    agents.add("sel-x1", labels={"zone": "x"})
    agents.add("sel-y", labels={"zone": "y"})
    agents.add("sel-x2", labels={"zone": "x"}, taints=[{"key": "dedicated", "effect": "NoSchedule"}])
    create_pool(kube, ns, "zoned", replicas=3, template={"resources": SMALL, "nodeSelector": {"zone": "x"}})
    wait_desired(kube, ns, "zoned", {"sel-x1": 3})
    tolerations = [{"key": "dedicated", "operator": "Exists"}]
    create_pool(
        kube,
        ns,
        "tolerant",
        replicas=4,
        template={"resources": SMALL, "nodeSelector": {"zone": "x"}, "tolerations": tolerations},
    )
    wait_desired(kube, ns, "tolerant", {"sel-x1": 2, "sel-x2": 2})


def test_booted_members_hold_capacity_snapshot_members_do_not(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents, operator: OperatorThread
) -> None:
    ns = kube_namespace
    agents.add("cap-a", vcpus=2, memory=1024)
    create_pool(kube, ns, "booted", replicas=4, mode="booted")
    obj = wait_desired(kube, ns, "booted", {"cap-a": 2})
    cond = ready_condition(obj)
    assert (cond["status"], cond["reason"]) == ("False", "InsufficientCapacity")
    assert "2 of 4 members fit" in cond["message"]
    create_pool(kube, ns, "snap", replicas=4, mode="snapshot")
    wait_desired(kube, ns, "snap", {"cap-a": 4})

    # The two booted members fill the node's vCPUs: a plain sandbox waits.
    create_sandbox(kube, ns, sandbox_obj("plain", vcpus=1, memory=256))
    waiting = wait_for(
        "Unschedulable",
        lambda: (
            (o := get_sandbox(kube, ns, "plain"))
            and o.get("status", {}).get("reason") == "Unschedulable"
            and o
        ),
    )
    assert "insufficient vcpus" in waiting["status"]["message"]
    # Scaling the booted pool down frees the room: the sandbox is placed, and desired drops.
    resp = kube.http(
        "PATCH", POOLS.format(ns=ns) + "/booted/scale", json={"spec": {"replicas": 1}}, headers=MERGE
    )
    assert resp.status_code == 200, resp.text
    wait_desired(kube, ns, "booted", {"cap-a": 1})
    assert wait_for("placed", lambda: placed_on(kube, ns, "plain")) == "cap-a"
    # The node is full again (one sandbox, one member); deleting the pool frees the member's room.
    create_sandbox(kube, ns, sandbox_obj("second", vcpus=1, memory=256))
    wait_for(
        "Unschedulable",
        lambda: (get_sandbox(kube, ns, "second") or {}).get("status", {}).get("reason") == "Unschedulable",
    )
    assert kube.http("DELETE", POOLS.format(ns=ns) + "/booted").status_code == 200
    assert wait_for("placed", lambda: placed_on(kube, ns, "second")) == "cap-a"


def test_scale_down_lowers_desired_and_deleting_a_pool_drops_it(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents, operator: OperatorThread
) -> None:
    ns = kube_namespace
    agents.add("scale-a", "scale-b")
    create_pool(kube, ns, "elastic", replicas=6)
    wait_desired(kube, ns, "elastic", {"scale-a": 3, "scale-b": 3})
    resp = kube.http(
        "PATCH", POOLS.format(ns=ns) + "/elastic/scale", json={"spec": {"replicas": 3}}, headers=MERGE
    )
    assert resp.status_code == 200, resp.text
    obj = wait_desired(kube, ns, "elastic", {"scale-a": 2, "scale-b": 1})
    assert obj["status"]["replicas"] == 3
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    scale = kube.http("GET", POOLS.format(ns=ns) + "/elastic/scale").json()
    assert scale["status"] == {"replicas": 3, "selector": f"{POOL_LABEL}=elastic"}
    kube.http("PATCH", POOLS.format(ns=ns) + "/elastic/scale", json={"spec": {"replicas": 0}}, headers=MERGE)
    obj = wait_desired(kube, ns, "elastic", {})
    assert obj["status"]["replicas"] == 0

    assert 'pool="elastic"' in metrics(operator)
    assert kube.http("DELETE", POOLS.format(ns=ns) + "/elastic").status_code == 200
    wait_for("pool series dropped", lambda: 'pool="elastic"' not in metrics(operator))
    # A claim naming the deleted pool is placed cold, like any sandbox.
    create_sandbox(kube, ns, sandbox_obj("orphan", vcpus=1, memory=256, pool="elastic"))
    assert wait_for("placed", lambda: placed_on(kube, ns, "orphan")) in {"scale-a", "scale-b"}


def test_a_claim_goes_to_the_node_with_a_ready_member(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents, operator: OperatorThread
) -> None:
    ns = kube_namespace
    agents.add("warm-a", "warm-b")
    uid = create_pool(kube, ns, "warm", replicas=2)["metadata"]["uid"]
    wait_desired(kube, ns, "warm", {"warm-a": 1, "warm-b": 1})
    # Only warm-b's member is ready; spreading alone would pick warm-a (same load, first by name).
    report(kube, "warm-b", {f"{ns}/warm": PoolReport(uid=uid, ready=1)})
    wait_for("ready 1", lambda: (get_pool(kube, ns, "warm") or {})["status"].get("readyReplicas") == 1)
    create_sandbox(kube, ns, sandbox_obj("claim-1", vcpus=1, memory=256, pool="warm"))
    assert wait_for("placed", lambda: placed_on(kube, ns, "claim-1")) == "warm-b"
    labels = (get_sandbox(kube, ns, "claim-1") or {})["metadata"]["labels"]
    assert labels[POOL_LABEL] == "warm"
    # warm-b's one member is spoken for until its agent answers: the next claim goes cold.
    create_sandbox(kube, ns, sandbox_obj("claim-2", vcpus=1, memory=256, pool="warm"))
    wait_for("placed", lambda: placed_on(kube, ns, "claim-2"))
    text = metrics(operator)
    assert 'vmsandbox_operator_pool_claims_scheduled_total{start="warm"} 1.0' in text
    said = {
        n: " ".join(e["message"] for e in wait_events(kube, ns, n, "Scheduled"))
        for n in ("claim-1", "claim-2")
    }
    assert "placed on node warm-b (cloud-hypervisor); a pool member is ready there" in said["claim-1"]
    assert "no pool member for it (pool warm has no ready member), it starts cold" in said["claim-2"]
    assert 'vmsandbox_operator_pool_claims_scheduled_total{start="cold"} 1.0' in text


@pytest.mark.parametrize(
    ("name", "spec", "why"),
    [
        ("missing", {"pool": "no-such-pool"}, "pool no-such-pool not found"),
        ("bigger", {"pool": "shaped", "vcpus": 2}, "spec.resources (2 vCPUs, 256 MiB) differ"),
        ("other-net", {"pool": "shaped", "network": {"mode": "open"}}, "network mode open differs"),
        ("other-hv", {"pool": "shaped", "hypervisor": "qemu"}, "hypervisor qemu differs"),
    ],
)
def test_a_missing_pool_or_another_shape_still_schedules(
    kube: LocalCluster,
    kube_namespace: str,
    agents: FakeAgents,
    operator: OperatorThread,
    name: str,
    spec: dict[str, Any],
    why: str,
) -> None:
    ns = kube_namespace
    agents.add(f"shape-{name}", hypervisors=("cloud-hypervisor", "qemu"))
    uid = create_pool(kube, ns, "shaped", replicas=1)["metadata"]["uid"]
    wait_desired(kube, ns, "shaped", {f"shape-{name}": 1})
    report(kube, f"shape-{name}", {f"{ns}/shaped": PoolReport(uid=uid, ready=1)})
    wait_for("ready", lambda: (get_pool(kube, ns, "shaped") or {})["status"].get("readyReplicas") == 1)
    body = {"vcpus": 1, "memory": 256, **spec}
    create_sandbox(kube, ns, sandbox_obj(name, **body))
    assert wait_for("placed", lambda: placed_on(kube, ns, name)) == f"shape-{name}"
    assert 'vmsandbox_operator_pool_claims_scheduled_total{start="cold"} 1.0' in metrics(operator)
    message = " ".join(e["message"] for e in wait_events(kube, ns, name, "Scheduled"))
    assert "it starts cold" in message and why in message, message


def test_a_template_the_cluster_does_not_allow_gets_no_members(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents, operator: OperatorThread
) -> None:
    """The template is a tenant's too: the operator's admission rules apply to it as to a sandbox."""
    ns = kube_namespace
    agents.add("deny-a", hypervisors=("cloud-hypervisor", "process"))
    create_pool(kube, ns, "nova", replicas=2, template={"resources": SMALL, "hypervisor": "process"})
    obj = wait_for(
        "Invalid", lambda: (o := get_pool(kube, ns, "nova")) and "conditions" in o.get("status", {}) and o
    )
    cond = ready_condition(obj)
    assert (cond["status"], cond["reason"]) == ("False", "Invalid")
    assert cond["message"].startswith("spec.template.hypervisor: 'process' is not allowed on this cluster")
    assert obj["status"]["replicas"] == 0 and desired(kube, ns, "nova") == {}


def test_only_the_leader_writes_pool_status_and_its_successor_carries_on(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    agents.add("lead-a", "lead-b")
    first = OperatorThread(operator_config(ns, identity="pools-1"), kube.kubeconfig_path).start()
    second: OperatorThread | None = None
    try:
        wait_for("first leads", first.leading)
        second = OperatorThread(operator_config(ns, identity="pools-2"), kube.kubeconfig_path).start()
        create_pool(kube, ns, "relay", replicas=2)
        wait_desired(kube, ns, "relay", {"lead-a": 1, "lead-b": 1})
        assert not second.leading()
        first.stop()
        wait_for("second leads", second.leading, timeout=30)
        resp = kube.http(
            "PATCH", POOLS.format(ns=ns) + "/relay/scale", json={"spec": {"replicas": 4}}, headers=MERGE
        )
        assert resp.status_code == 200, resp.text
        wait_desired(kube, ns, "relay", {"lead-a": 2, "lead-b": 2})
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_cluster_without_the_pool_crd_still_schedules(tmp_path: Path) -> None:
    """Helm never upgrades CRDs: an operator of this version on a cluster that has only the
    VMSandbox CRD (from an older release) must lead and schedule, pools or not."""
    try:
        bin_dir = find_binaries(build=True)
    except KubeBinariesUnavailable as exc:
        if kube_required():
            raise
        pytest.skip(f"real Kubernetes API server unavailable: {exc}")
    crds = tmp_path / "crds"
    crds.mkdir()
    shutil.copy(REPO / "crds" / "vmsandboxes.yaml", crds)
    with LocalCluster(crd_dir=crds, bin_dir=bin_dir) as kube:
        ns = "old-release"
        resp = kube.http("POST", "/api/v1/namespaces", json={"metadata": {"name": ns}})
        assert resp.status_code == 201, resp.text
        agents = FakeAgents(kube, ns)
        try:
            agents.add("old-a")
            with leading_operator(operator_config(ns), kube.kubeconfig_path):
                create_sandbox(kube, ns, sandbox_obj("plain", pool="small"))
                assert wait_for("placed", lambda: placed_on(kube, ns, "plain")) == "old-a"
        finally:
            agents.close()
