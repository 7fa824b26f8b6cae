"""Short operator and agent scenarios on the local control plane, their API calls checked against the chart.

The operator runs in-process as the chart's ServiceAccount user, with a stand-in agent (a
Node and a renewed Lease, as the contract asks of a real one); one sandbox goes through
scheduling, completion and TTL deletion. The real agent runs as a process as its
ServiceAccount user; one sandbox scheduled to it fails (pull policy Never, image not cached)
and is deleted. The front records every request, including kopf's own (CRD scan, watches),
and each must be granted by the rendered ClusterRole/Role. The rendered RBAC objects are also
installed, and the front enforces them: a call the chart does not grant fails live as well.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.helm import Helm
from tests.chart.live_rbac import chart_rbac
from tests.chart.test_rbac import AGENT_SA, OPERATOR_SA, check_records
from tests.node_agent.conftest import allow_process_backend
from vmsandbox.devcluster.cluster import LocalCluster

pytestmark = pytest.mark.kube

harness = pytest.importorskip("tests.operator.harness", reason="the operator's test harness is absent")
factories = pytest.importorskip("tests.operator.factories", reason="the operator's test factories are absent")
support = pytest.importorskip("tests.node_agent.support", reason="the node agent's test support is absent")


@pytest.fixture
def sandbox_namespace(kube: LocalCluster) -> Iterator[str]:
    """Apart from the release namespace, so Role grants cannot stand in for missing ClusterRole ones."""
    name = f"team-{uuid.uuid4().hex[:6]}"
    resp = kube.http(
        "POST",
        "/api/v1/namespaces",
        json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    assert resp.status_code == 201, resp.text
    allow_process_backend(kube, name)
    yield name
    kube.http("DELETE", f"/api/v1/namespaces/{name}")


def test_operator_scenario_calls_are_granted(
    helm: Helm, kube: LocalCluster, kube_namespace: str, sandbox_namespace: str
) -> None:
    release_ns = kube_namespace
    user = f"system:serviceaccount:{release_ns}:{OPERATOR_SA}"
    start = len(kube.requests_made())
    agents = harness.FakeAgents(kube, release_ns)
    try:
        agents.add("rbac-n1", vcpus=4, memory=4096)
        config = harness.operator_config(release_ns)
        with (
            chart_rbac(kube, helm, release_ns),
            harness.leading_operator(config, kube.kubeconfig_for(user)),
        ):
            sandbox = factories.sandbox_obj("rbac-hello")
            sandbox["spec"]["ttlSecondsAfterFinished"] = 0
            harness.create_sandbox(kube, sandbox_namespace, sandbox)

            def scheduled() -> bool:
                obj = harness.get_sandbox(kube, sandbox_namespace, "rbac-hello")
                return harness.phase(obj) == "Scheduled"

            harness.wait_for("Scheduled", scheduled)
            # A pool: the operator watches it and writes its status (each node's share).
            pools = f"/apis/vmsandbox.io/v1alpha1/namespaces/{sandbox_namespace}/vmsandboxpools"
            pool = {"apiVersion": "vmsandbox.io/v1alpha1", "kind": "VMSandboxPool", "metadata": {"name": "p"}}
            assert kube.http("POST", pools, json={**pool, "spec": {"replicas": 1}}).status_code == 201
            harness.wait_for(
                "pool status",
                lambda: (kube.http("GET", f"{pools}/p").json().get("status") or {}).get("replicas"),
            )
            # The agent's part, done as the admin: the container ran and exited 0.
            path = harness.SANDBOXES.format(ns=sandbox_namespace) + "/rbac-hello/status"
            resp = kube.http(
                "PATCH",
                path,
                json={"status": {"phase": "Succeeded", "finishedAt": harness.micro_now()}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert resp.status_code == 200, resp.text
            harness.wait_for(
                "TTL deletion", lambda: harness.get_sandbox(kube, sandbox_namespace, "rbac-hello") is None
            )
    finally:
        agents.close()
    records = [r for r in kube.requests_made(since=start) if r.user == user]
    verbs = {(r.resource, r.verb) for r in records}
    # The scenario really exercised the operator: watches, its placement and the TTL delete.
    assert ("vmsandboxes", "watch") in verbs and ("vmsandboxes", "delete") in verbs, sorted(verbs)
    assert ("vmsandboxpools", "watch") in verbs and ("vmsandboxpools", "patch") in verbs, sorted(verbs)
    assert check_records(helm, records) == len(records)
    assert all(r.status != 403 for r in records), [r for r in records if r.status == 403]


def test_agent_scenario_calls_are_granted(
    helm: Helm, kube: LocalCluster, kube_namespace: str, sandbox_namespace: str, tmp_path: Path
) -> None:
    release_ns = kube_namespace
    user = f"system:serviceaccount:{release_ns}:{AGENT_SA}"
    node = f"rbac-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: AF_UNIX path limit
    start = len(kube.requests_made())
    with kube.api_client() as api_client:
        cluster = support.Cluster(api_client=api_client, namespace=sandbox_namespace)
        cluster.create_node(node)
        env = support.process_agent_env(node, release_ns, kube.kubeconfig_for(user), workdir)
        agent = support.AgentProcess(node=node, workdir=workdir, env=env, cluster=cluster)
        rbac = contextlib.ExitStack()
        try:
            rbac.enter_context(chart_rbac(kube, helm, release_ns))
            agent.start()
            spec = {
                "image": "127.0.0.1:9/absent/image:1",
                "imagePullPolicy": "Never",
                "restartPolicy": "Never",
            }
            cluster.create_sandbox("rbac-pull", spec, node=node)
            status = cluster.wait_phase("rbac-pull", "Failed", timeout=60)
            assert status.get("reason"), status
            cluster.delete("rbac-pull")
            try:
                cluster.wait_gone("rbac-pull", timeout=60)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; {cluster.get('rbac-pull')}; agent log:\n{agent.logs()[-3000:]}"
                ) from None
        finally:
            agent.stop()
            rbac.close()
            kube.http("DELETE", f"/api/v1/nodes/{node}")
            shutil.rmtree(workdir, ignore_errors=True)
    records = [r for r in kube.requests_made(since=start) if r.user == user]
    calls = {(r.resource, r.subresource, r.verb) for r in records}
    # The scenario really exercised the agent: its watch, heartbeat, node, status, finalizer.
    for needed in (
        ("vmsandboxes", "", "watch"),
        ("leases", "", "create"),
        ("nodes", "", "patch"),
        ("vmsandboxes", "status", "update"),
        ("vmsandboxes", "", "patch"),
    ):
        assert needed in calls, (needed, sorted(calls))
    assert check_records(helm, records) == len(records)
    assert all(r.status != 403 for r in records), [r for r in records if r.status == 403]
