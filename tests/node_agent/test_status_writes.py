"""Status and finalizer writes against the real API server: stale copies never overwrite others' changes."""

from __future__ import annotations

import pytest

from tests.node_agent.support import Cluster, unique
from vmsandbox.api.constants import AGENT_FINALIZER, OPERATOR_FINALIZER
from vmsandbox.api.status import ConditionStatus, ConditionType, Phase, VMSandboxStatus
from vmsandbox.devcluster import LocalCluster
from vmsandbox.node_agent.kube import Kube
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.statuswriter import SandboxWriter

pytestmark = pytest.mark.kube


@pytest.fixture
def writer(kube: LocalCluster) -> SandboxWriter:
    return SandboxWriter(Kube(kube.api_client()), AgentMetrics())


def _running(status: VMSandboxStatus) -> None:
    status.phase = Phase.RUNNING
    status.set_condition(ConditionType.READY, ConditionStatus.TRUE, "Running")


def test_a_stale_copy_is_reread_and_the_change_reapplied(cluster: Cluster, writer: SandboxWriter) -> None:
    name = unique("conflict")
    cluster.create_sandbox(name, {"image": "busybox"})
    stale = cluster.schedule(name, "n1", schedule_ms=3.0)
    # Meanwhile the operator writes again: the agent's copy is now out of date.
    cluster.custom.patch_namespaced_custom_object_status(
        "vmsandbox.io",
        "v1alpha1",
        cluster.namespace,
        "vmsandboxes",
        name,
        {"status": {"bootTimings": {"schedule": 9.0}}},
        _content_type="application/merge-patch+json",
    )
    written = writer.update_status(stale, _running)
    assert written is not None
    status = cluster.status(name)
    assert status["phase"] == "Running"
    assert status["bootTimings"]["schedule"] == 9.0, "the operator's newer value must survive"
    assert status["nodeName"] == "n1"
    assert writer.metrics.registry.get_sample_value("vmsandbox_agent_status_conflicts_total") == 1

    before = cluster.get(name)
    assert before is not None
    assert writer.update_status(before, _running) == before  # nothing to change: nothing sent
    after = cluster.get(name)
    assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_finalizers_are_added_and_removed_without_losing_others(
    cluster: Cluster, writer: SandboxWriter
) -> None:
    name = unique("fin")
    stale = cluster.create_sandbox(name, {"image": "busybox"})
    cluster.custom.patch_namespaced_custom_object(
        "vmsandbox.io",
        "v1alpha1",
        cluster.namespace,
        "vmsandboxes",
        name,
        {"metadata": {"finalizers": [OPERATOR_FINALIZER]}},
        _content_type="application/merge-patch+json",
    )
    added = writer.set_finalizer(stale, AGENT_FINALIZER, present=True)
    assert added is not None
    assert added["metadata"]["finalizers"] == [OPERATOR_FINALIZER, AGENT_FINALIZER]
    removed = writer.set_finalizer(stale, AGENT_FINALIZER, present=False)
    assert removed is not None
    assert removed["metadata"]["finalizers"] == [OPERATOR_FINALIZER]
    # Gone objects are reported as None, not as errors.
    cluster.custom.patch_namespaced_custom_object(
        "vmsandbox.io",
        "v1alpha1",
        cluster.namespace,
        "vmsandboxes",
        name,
        {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )
    cluster.delete(name)
    cluster.wait_gone(name)
    assert writer.update_status(stale, _running) is None
    assert writer.set_finalizer(stale, AGENT_FINALIZER, present=True) is None
