"""Status and finalizer writes against the real API server: stale copies never overwrite others' changes."""

from __future__ import annotations

import time

import pytest

from tests.node_agent.support import Cluster, unique
from vmsandbox.api.constants import AGENT_FINALIZER, OPERATOR_FINALIZER
from vmsandbox.api.status import ConditionStatus, ConditionType, Phase, VMSandboxStatus
from vmsandbox.devcluster import LocalCluster
from vmsandbox.kube.retry import WriteDeferred, retry_hint
from vmsandbox.node_agent.kube import Kube
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.statuswriter import SandboxWriter

pytestmark = pytest.mark.kube


@pytest.fixture
def writer(kube: LocalCluster) -> SandboxWriter:
    return SandboxWriter(Kube(kube.client()), AgentMetrics())


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
    _set_finalizers(cluster, name, [OPERATOR_FINALIZER])
    added = writer.set_finalizer(stale, AGENT_FINALIZER, present=True)
    assert added is not None
    assert added["metadata"]["finalizers"] == [OPERATOR_FINALIZER, AGENT_FINALIZER]
    removed = writer.set_finalizer(stale, AGENT_FINALIZER, present=False)
    assert removed is not None
    assert removed["metadata"]["finalizers"] == [OPERATOR_FINALIZER]
    # Gone objects are reported as None, not as errors.
    _set_finalizers(cluster, name, None)
    cluster.delete(name)
    cluster.wait_gone(name)
    assert writer.update_status(stale, _running) is None
    assert writer.set_finalizer(stale, AGENT_FINALIZER, present=True) is None


def _set_finalizers(cluster: Cluster, name: str, finalizers: list[str] | None) -> None:
    """Another client's merge patch of the whole list (None removes it)."""
    cluster.merge_patch(name, {"metadata": {"finalizers": finalizers}})


def _patch_answers(kube: LocalCluster, since: int, name: str) -> list[int]:
    """The HTTP status of each patch of ``name`` logged since record ``since``."""
    return [r.status for r in kube.requests_made(since=since) if r.verb == "patch" and r.name == name]


def test_a_finalizer_patch_from_a_copy_older_than_a_status_write_lands_at_once(
    cluster: Cluster, kube: LocalCluster, writer: SandboxWriter
) -> None:
    """The operator's status write right after scheduling changes the resourceVersion, not the
    finalizer list: the agent's patch computed before it is taken as it is, in one request."""
    name = unique("finrace")
    first = cluster.create_sandbox(name, {"image": "busybox"})
    cluster.schedule(name, "n1")
    mark = len(kube.requests_made())
    added = writer.set_finalizer(first, AGENT_FINALIZER, present=True)  # onto no list at all
    assert added is not None and added["metadata"]["finalizers"] == [AGENT_FINALIZER]
    assert _patch_answers(kube, mark, name) == [200]
    _set_finalizers(cluster, name, [OPERATOR_FINALIZER])
    before = cluster.get(name)
    assert before is not None
    cluster.schedule(name, "n2")  # a status write the agent's copy does not know
    mark = len(kube.requests_made())
    added = writer.set_finalizer(before, "example.com/late", present=True)
    assert added is not None
    assert added["metadata"]["finalizers"] == [OPERATOR_FINALIZER, "example.com/late"]
    assert added["status"]["phase"] == "Scheduled"
    assert _patch_answers(kube, mark, name) == [200]
    # A list that changed meanwhile is still refused and the patch computed again.
    stale = added
    _set_finalizers(cluster, name, [OPERATOR_FINALIZER, "example.com/late", "example.com/other"])
    removed = writer.set_finalizer(stale, "example.com/late", present=False)
    assert removed is not None
    assert removed["metadata"]["finalizers"] == [OPERATOR_FINALIZER, "example.com/other"]


def test_a_write_the_server_keeps_refusing_is_deferred_not_failed(
    cluster: Cluster, kube: LocalCluster
) -> None:
    """Past its patience (or when told to stop) a write gives up with WriteDeferred, so the caller
    keeps the change; a 429's Retry-After is waited for; once the server takes writes, it lands."""
    name = unique("deferred")
    cluster.create_sandbox(name, {"image": "busybox"})
    stale = cluster.schedule(name, "n1")
    path = f"/apis/vmsandbox.io/v1alpha1/namespaces/{cluster.namespace}/vmsandboxes/{name}/status$"
    metrics = AgentMetrics()
    writer = SandboxWriter(Kube(kube.client()), metrics, patience=2.0)
    kube.inject_fault(method="PUT", path=path, status=503, count=None)
    try:
        t0 = time.monotonic()
        with pytest.raises(WriteDeferred):
            writer.update_status(stale, _running)
        assert 1.0 < time.monotonic() - t0 < 10
        assert metrics.registry.get_sample_value("vmsandbox_agent_api_write_retries_total", {}) >= 3
        with pytest.raises(WriteDeferred):
            writer.update_status(stale, _running, abort=lambda: True)
        assert cluster.status(name)["phase"] == "Scheduled"
    finally:
        kube.clear_faults()
    kube.inject_fault(method="PUT", path=path, status=429, count=1, retryAfter=1)
    t0 = time.monotonic()
    assert writer.update_status(stale, _running) is not None
    assert time.monotonic() - t0 >= 0.9, "Retry-After was honoured"
    assert cluster.status(name)["phase"] == "Running"


def test_retry_hints() -> None:
    from urllib3.exceptions import MaxRetryError

    from vmsandbox.kube import ApiError, wire

    def api(status: int, retry_after: str | None = None) -> ApiError:
        req = wire.request("PATCH", "/x")
        try:
            wire.decode(req, status, {"Retry-After": retry_after} if retry_after else {}, "x")
        except ApiError as exc:
            return exc
        raise AssertionError(f"{status} was not refused")

    assert retry_hint(api(500)) == 0.0 and retry_hint(api(503)) == 0.0
    assert retry_hint(api(429, "7")) == 7.0
    assert retry_hint(api(409)) is None and retry_hint(api(403)) is None and retry_hint(api(422)) is None
    refused = wire.unreachable(wire.request("GET", "/x"), MaxRetryError(None, "/", "refused"))  # type: ignore[arg-type]
    assert retry_hint(refused) == 0.0
    assert retry_hint(ValueError("a bug")) is None
