"""The operator's cache keeps the newest copy of each object without ordering resourceVersions:
the versions here are opaque strings that sort the wrong way on purpose."""

from __future__ import annotations

from typing import Any

from tests.operator.factories import node_obj, sandbox_obj
from vmsandbox.api.constants import AGENT_READY_LABEL
from vmsandbox.kube.expectations import TTL_SECONDS
from vmsandbox.operator.cache import ClusterCache
from vmsandbox.operator.config import OperatorConfig


def _at(obj: dict[str, Any], version: str, **labels: str) -> dict[str, Any]:
    meta = {**obj["metadata"], "resourceVersion": version}
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    return {**obj, "metadata": meta}


def _stage(cache: ClusterCache) -> str | None:
    entry = cache.sandboxes.get("default/sb")
    return None if entry is None else (entry.raw["metadata"].get("labels") or {}).get("stage")


def test_a_watch_event_older_than_the_operators_own_write_is_not_stored() -> None:
    cache = ClusterCache(OperatorConfig())
    base = sandbox_obj("sb")
    cache.upsert_sandbox(_at(base, "z9", stage="created"))
    cache.upsert_sandbox(_at(base, "a1", stage="placed"), "own")
    cache.upsert_sandbox(_at(base, "z9", stage="created"))  # a late echo of an earlier version
    assert _stage(cache) == "placed"
    cache.upsert_sandbox(_at(base, "a1", stage="placed"))  # the watch reaches the write
    cache.upsert_sandbox(_at(base, "m5", stage="running"))  # and goes on
    assert _stage(cache) == "running"


def test_a_listed_copy_of_an_object_the_watch_moved_meanwhile_is_dropped() -> None:
    cache = ClusterCache(OperatorConfig())
    base = sandbox_obj("sb")
    cache.upsert_sandbox(_at(base, "q1", stage="created"))
    cache.begin_list("sandbox")
    cache.upsert_sandbox(_at(base, "b7", stage="running"))  # delivered while the list was on its way
    cache.upsert_sandbox(_at(base, "q1", stage="created"), "list")
    other = sandbox_obj("other")
    cache.upsert_sandbox(_at(other, "c3", stage="listed"), "list")
    cache.end_list("sandbox")
    assert _stage(cache) == "running"
    assert "default/other" in cache.sandboxes


def test_a_listed_copy_newer_than_the_cache_holds_back_the_watch_until_it_catches_up() -> None:
    cache = ClusterCache(OperatorConfig())
    base = sandbox_obj("sb")
    cache.upsert_sandbox(_at(base, "k1", stage="created"))
    cache.begin_list("sandbox")
    cache.upsert_sandbox(_at(base, "d4", stage="running"), "list")
    cache.end_list("sandbox")
    cache.upsert_sandbox(_at(base, "k2", stage="placed"))  # the watch, behind the list
    assert _stage(cache) == "running"
    cache.upsert_sandbox(_at(base, "d4", stage="running"))
    cache.upsert_sandbox(_at(base, "e0", stage="done"))
    assert _stage(cache) == "done"


def test_a_recreated_object_replaces_its_namesake_whatever_the_versions() -> None:
    cache = ClusterCache(OperatorConfig())
    first = sandbox_obj("sb")
    cache.upsert_sandbox(_at(first, "9", stage="old"), "own")
    second = sandbox_obj("sb")  # another uid
    cache.upsert_sandbox(_at(second, "1", stage="new"))
    assert _stage(cache) == "new"


def test_nodes_follow_the_same_rule() -> None:
    cache = ClusterCache(OperatorConfig())
    cache.upsert_node(_at(node_obj("n1"), "x2"))
    cache.begin_list("node")
    assert cache.upsert_node(_at(node_obj("n1", ready=False), "y7")) is True
    assert cache.upsert_node(_at(node_obj("n1"), "x2"), "list") is False
    cache.end_list("node")
    assert cache.nodes["n1"]["metadata"]["resourceVersion"] == "y7"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_event_held_for_a_listed_version_the_watch_skips_is_applied_once_the_wait_lapses() -> None:
    """The operator listed a new node before its agent labelled it; kopf's watch started after
    the label and delivered only the labelled copy. Held back for the listed version, which it
    will never deliver, that copy must still reach the cache: it is the node's last event."""
    clock = _Clock()
    cache = ClusterCache(OperatorConfig(), clock=clock)
    cache.begin_list("node")
    cache.upsert_node(_at(node_obj("n1", ready=False), "p3"), "list")
    cache.end_list("node")
    assert cache.upsert_node(_at(node_obj("n1"), "b8")) is False  # held back for p3
    assert cache.lapsed_events() == []  # still waiting
    assert not cache.node_views()["n1"].labels.get(AGENT_READY_LABEL)

    clock.now += TTL_SECONDS
    [(kind, raw)] = cache.lapsed_events()
    assert (kind, raw["metadata"]["resourceVersion"]) == ("node", "b8")
    assert cache.lapsed_events() == [], "handed out once"
    assert cache.upsert_node(raw) is True  # as the operator replays it
    assert cache.node_views()["n1"].labels[AGENT_READY_LABEL] == "ready"


def test_a_held_event_is_dropped_when_the_watch_catches_up_or_the_object_goes() -> None:
    clock = _Clock()
    cache = ClusterCache(OperatorConfig(), clock=clock)
    sb = sandbox_obj("sb")
    cache.begin_list("node", "sandbox")
    cache.upsert_node(_at(node_obj("n1"), "d4"), "list")
    cache.upsert_sandbox(_at(sb, "d4", stage="running"), "list")
    cache.end_list("node", "sandbox")
    cache.upsert_node(_at(node_obj("n1", ready=False), "k2"))  # the watch, behind the list
    cache.upsert_node(_at(node_obj("n1"), "d4"))  # and caught up: nothing older is kept
    cache.upsert_sandbox(_at(sb, "k2", stage="placed"))  # held back for d4
    assert _stage(cache) == "running"
    cache.forget_sandbox(_at(sb, "z0"))  # deleted: its held event must not bring it back
    clock.now += TTL_SECONDS
    assert cache.lapsed_events() == []
    assert cache.node_views()["n1"].labels[AGENT_READY_LABEL] == "ready"


def test_a_held_event_is_dropped_by_a_newer_copy_from_a_write_or_a_list() -> None:
    clock = _Clock()
    cache = ClusterCache(OperatorConfig(), clock=clock)
    sb = sandbox_obj("sb")
    cache.upsert_sandbox(_at(sb, "q1", stage="created"), "own")
    cache.upsert_sandbox(_at(sb, "h5", stage="echo"))  # held back for q1
    cache.upsert_sandbox(_at(sb, "w2", stage="placed"), "own")  # a later write: newer than it
    cache.begin_list("node")
    cache.upsert_node(_at(node_obj("n1"), "l1"), "list")
    cache.end_list("node")
    cache.upsert_node(_at(node_obj("n1", ready=False), "o0"))  # held back for l1
    cache.begin_list("node")
    cache.upsert_node(_at(node_obj("n1"), "l2"), "list")  # a later list: newer than it
    cache.end_list("node")
    clock.now += TTL_SECONDS
    assert cache.lapsed_events() == []
    assert _stage(cache) == "placed"
