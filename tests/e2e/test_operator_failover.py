"""One active replica and crash safety, with operators as real processes and fake agents.

Each sandbox must end scheduled exactly once: one successful placement write in the API
server's request log, and a label that matches its status.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.processes import OperatorProcess, label_writes
from tests.operator.factories import sandbox_obj
from tests.operator.harness import FakeAgents, create_sandbox, list_sandboxes, phase, purge, wait_for
from vmsandbox.api.constants import NODE_LABEL
from vmsandbox.devcluster.cluster import LocalCluster

pytestmark = pytest.mark.kube

FAST = {
    "agent_alive_seconds": 20,
    "node_lost_grace_seconds": 60,
    "retry_period_seconds": 1,
}


@pytest.fixture
def agents(kube: LocalCluster, kube_namespace: str) -> Iterator[FakeAgents]:
    fake = FakeAgents(kube, kube_namespace, period=2.0)
    yield fake
    fake.close()
    purge(kube, kube_namespace)


def lease_holder(kube: LocalCluster, ns: str) -> str | None:
    resp = kube.http("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/vmsandbox-operator")
    return (resp.json().get("spec") or {}).get("holderIdentity") if resp.status_code == 200 else None


def scheduled_items(kube: LocalCluster, ns: str) -> list[dict[str, Any]]:
    return [i for i in list_sandboxes(kube, ns) if phase(i) == "Scheduled"]


def assert_each_scheduled_once(kube: LocalCluster, ns: str, names: list[str], since: int) -> Counter[str]:
    items = {i["metadata"]["name"]: i for i in list_sandboxes(kube, ns)}
    writes = label_writes(kube, ns, since)
    per_sandbox = Counter(name for (name, _who) in writes.elements())
    for name in names:
        item = items[name]
        assert phase(item) == "Scheduled", name
        assert item["metadata"]["labels"][NODE_LABEL] == item["status"]["nodeName"], name
        assert per_sandbox[name] == 1, f"{name} placed {per_sandbox[name]} times"
    return Counter(who for (_name, who) in writes.elements())


def test_two_replicas_200_sandboxes_leader_killed_midway(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents, tmp_path: Path
) -> None:
    ns = kube_namespace
    for i in range(4):
        agents.add(f"ha-{i}", vcpus=64, memory=64 * 1024)
    since = len(kube.requests_made())
    settings = {**FAST, "lease_duration_seconds": 8, "renew_deadline_seconds": 6}
    first = OperatorProcess(kube, ns, "replica-a", tmp_path, **settings)
    second: OperatorProcess | None = None
    try:
        wait_for("replica-a leads", lambda: lease_holder(kube, ns) == "replica-a", timeout=30)
        second = OperatorProcess(kube, ns, "replica-b", tmp_path, **settings)
        time.sleep(2.0)  # replica-b is up, watching, and not leading
        assert lease_holder(kube, ns) == "replica-a"
        names = [f"s{i:03d}" for i in range(200)]
        creator = threading.Thread(
            target=lambda: [create_sandbox(kube, ns, sandbox_obj(n, memory=128)) for n in names], daemon=True
        )
        creator.start()
        wait_for("some placed", lambda: len(scheduled_items(kube, ns)) >= 40, timeout=60)
        first.kill()
        killed_at = time.monotonic()
        wait_for("replica-b takes over", lambda: lease_holder(kube, ns) == "replica-b", timeout=30)
        failover = time.monotonic() - killed_at
        creator.join(120)
        wait_for("all 200 scheduled", lambda: len(scheduled_items(kube, ns)) == 200, timeout=90, interval=0.5)
        by_replica = assert_each_scheduled_once(kube, ns, names, since)
        assert failover < 30, f"fail-over took {failover:.1f}s"
        assert by_replica["replica-a"] >= 1 and by_replica["replica-b"] >= 1, by_replica
        assert sum(by_replica.values()) == 200
    finally:
        first.kill()
        if second is not None:
            assert second.stop() == 0, second.log()[-3000:]


def test_operator_sigkill_midflight_then_restart_schedules_each_once(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents, tmp_path: Path
) -> None:
    ns = kube_namespace
    agents.add("crash-a", vcpus=64, memory=64 * 1024)
    agents.add("crash-b", vcpus=64, memory=64 * 1024)
    since = len(kube.requests_made())
    settings = {**FAST, "lease_duration_seconds": 4, "renew_deadline_seconds": 3}
    names = [f"c{i:02d}" for i in range(50)]
    for name in names:  # all waiting before the operator starts: it meets a burst of 50
        create_sandbox(kube, ns, sandbox_obj(name, memory=128))
    # One worker, so the kill lands while placements are still being written.
    op = OperatorProcess(kube, ns, "crashy", tmp_path, workers=1, **settings)
    try:
        wait_for("some placed", lambda: len(scheduled_items(kube, ns)) >= 5, timeout=30, interval=0.02)
        op.kill()
        assert len(scheduled_items(kube, ns)) < 50, "the kill came too late to be mid-flight"
        op = OperatorProcess(kube, ns, "crashy-restarted", tmp_path, **settings)
        wait_for("all 50 scheduled", lambda: len(scheduled_items(kube, ns)) == 50, timeout=60, interval=0.5)
        assert_each_scheduled_once(kube, ns, names, since)
    finally:
        assert op.stop() in (0, -9), op.log()[-3000:]
