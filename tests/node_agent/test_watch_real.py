"""The watch against the real API server: only this node's sandboxes, and 410 Gone for an expired version."""

from __future__ import annotations

from typing import Any

import pytest

from tests.node_agent.support import Cluster, unique
from vmsandbox.devcluster import LocalCluster
from vmsandbox.kube.watch import Gone, apply_event
from vmsandbox.node_agent.kube import Kube
from vmsandbox.node_agent.watch import node_selector

pytestmark = pytest.mark.kube


class _Seen:
    def __init__(self) -> None:
        self.names: list[str] = []

    def observe(self, obj: dict[str, Any]) -> None:
        self.names.append(obj["metadata"]["name"])

    def forget(self, obj: dict[str, Any]) -> None:
        self.names.append("-" + obj["metadata"]["name"])


def test_the_server_filters_by_node_and_the_watch_resumes(kube: LocalCluster, cluster: Cluster) -> None:
    api = Kube(kube.client())
    node = unique("wnode")
    mine, other = unique("mine"), unique("other")
    items, rv = api.list_sandboxes(node_selector(node))
    assert items == []
    cluster.create_sandbox(other, {"image": "busybox"}, node="elsewhere")
    cluster.create_sandbox(mine, {"image": "busybox"}, node=node)
    cluster.delete(mine)
    seen = _Seen()
    for event in api.watch_sandboxes(node_selector(node), rv, timeout_seconds=2):
        rv = apply_event(event, seen) or rv  # type: ignore[arg-type]
    assert seen.names and set(seen.names) == {mine, "-" + mine}, seen.names
    assert seen.names[-1] == "-" + mine


def test_an_expired_resource_version_is_410_gone(kube: LocalCluster, cluster: Cluster) -> None:
    api = Kube(kube.client())
    cluster.create_sandbox(unique("bump"), {"image": "busybox"})
    with pytest.raises(Gone):
        for event in api.watch_sandboxes(node_selector("any"), "1", timeout_seconds=5):
            apply_event(event, _Seen())  # type: ignore[arg-type]


class _Supervisor(_Seen):
    def __init__(self) -> None:
        super().__init__()
        self.lists: list[list[str]] = []

    def sync(self, objs: list[dict[str, Any]]) -> None:
        self.lists.append([o["metadata"]["name"] for o in objs])

    def schedule_orphan_sweep(self) -> None:
        pass


def test_the_watch_lists_again_after_410_gone(kube: LocalCluster, cluster: Cluster) -> None:
    from tests.node_agent.support import wait_for
    from vmsandbox.node_agent.metrics import AgentMetrics
    from vmsandbox.node_agent.watch import SandboxWatch

    node = unique("gnode")
    present = unique("present")
    cluster.create_sandbox(present, {"image": "busybox"}, node=node)
    supervisor = _Supervisor()
    metrics = AgentMetrics()

    class ExpiredFirst(SandboxWatch):
        """Resumes from a version the server no longer has, as after a long disconnection."""

        def _list(self) -> str:
            real = super()._list()
            return "1" if len(supervisor.lists) == 1 else real

    watch = ExpiredFirst(Kube(kube.client()), supervisor, metrics, node=node, timeout_seconds=5)  # type: ignore[arg-type]
    watch.start()
    wait_for("a second list after 410", lambda: len(supervisor.lists) >= 2, timeout=20)
    assert supervisor.lists[0] == supervisor.lists[1] == [present]
    assert metrics.registry.get_sample_value("vmsandbox_agent_watch_restarts_total", {"reason": "gone"}) == 1
    added = unique("added")
    cluster.create_sandbox(added, {"image": "busybox"}, node=node)
    try:
        wait_for("the watch to deliver a new sandbox", lambda: added in supervisor.names, timeout=20)
    finally:
        watch.stop()
        watch.thread.join(15)
    assert not watch.thread.is_alive()
