"""What a placement costs the API server, counted from the local control plane's request log.

A sandbox's placement is two writes by the operator: one metadata patch (finalizer, node label,
pool label) and one status write; the Scheduled Event is posted after them, off the decision's
path. Any extra write (a lost compare-and-swap against its own stale cache, a write split in
two, a re-decision) fails here.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.operator.factories import sandbox_obj
from tests.operator.harness import (
    FakeAgents,
    create_sandbox,
    events_for,
    leading_operator,
    operator_config,
    scheduled,
    wait_for,
)
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.requestlog import RequestRecord

pytestmark = pytest.mark.kube

#: Operator writes to one sandbox between its creation and phase Scheduled.
WRITE_BUDGET = 2
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def operator_writes(records: list[RequestRecord], identity: str, ns: str) -> list[RequestRecord]:
    return [
        r
        for r in records
        if r.user_agent == f"vmsandbox-operator/{identity}" and r.namespace == ns and r.method in WRITES
    ]


def test_a_placement_is_two_writes_one_at_a_time_and_in_a_burst(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    for i in range(3):
        agents.add(f"budget-{i}", vcpus=32, memory=32768)
    config = operator_config(ns, identity=f"budget-{ns}")
    since = len(kube.requests_made())
    singles = [f"one-{i}" for i in range(5)]
    burst = [f"burst-{i:02d}" for i in range(40)]
    with leading_operator(config, kube.kubeconfig_path):
        for name in singles:
            create_sandbox(kube, ns, sandbox_obj(name))
            wait_for(f"{name} scheduled", lambda n=name: scheduled(kube, ns, n), interval=0.02)
        for name in burst:
            create_sandbox(kube, ns, sandbox_obj(name))
        for name in burst:
            wait_for(f"{name} scheduled", lambda n=name: scheduled(kube, ns, n))
    # Stopped: every waiting Event was flushed.
    writes = operator_writes(kube.requests_made(since), config.identity, ns)
    per_sandbox = Counter(r.name for r in writes if r.resource == "vmsandboxes")
    over = {name: n for name, n in per_sandbox.items() if n > WRITE_BUDGET}
    assert not over, f"operator writes per sandbox above {WRITE_BUDGET}: {over}"
    assert set(per_sandbox) == {*singles, *burst}
    kinds = Counter(
        f"{r.method} {r.subresource or '-'} {r.status}" for r in writes if r.resource == "vmsandboxes"
    )
    assert kinds == {"PATCH - 200": 45, "PATCH status 200": 45}, kinds
    events = [r for r in writes if r.resource == "events"]
    assert len(events) == 45 and all(r.status == 201 for r in events)
    for name in (*singles, *burst):
        assert [e["reason"] for e in events_for(kube, ns, name)] == ["Scheduled"], name


def test_the_scheduled_event_waits_for_the_status_write(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    """The Event is posted once the decision's writes are done, never between them."""
    ns = kube_namespace
    agents.add("order-0")
    config = operator_config(ns, identity=f"order-{ns}")
    since = len(kube.requests_made())
    with leading_operator(config, kube.kubeconfig_path):
        for i in range(5):
            create_sandbox(kube, ns, sandbox_obj(f"o{i}"))
            wait_for(f"o{i} scheduled", lambda i=i: scheduled(kube, ns, f"o{i}"), interval=0.02)
            wait_for(f"o{i} event", lambda i=i: events_for(kube, ns, f"o{i}"), timeout=5, interval=0.02)
    writes = operator_writes(kube.requests_made(since), config.identity, ns)
    order = [
        "event" if r.resource == "events" else r.subresource or "meta"
        for r in writes
        if r.resource in ("vmsandboxes", "events")
    ]
    assert order == ["meta", "status", "event"] * 5, order
