"""The operator's Event recorder against the real API server: held back while decisions are
being made, merged when repeated, rate-limited, bounded with every drop counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.operator.factories import sandbox_obj
from tests.operator.harness import events_for
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.kube import Connection
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.operator.events import EventRecorder

pytestmark = pytest.mark.kube


def run(kube: LocalCluster, ns: str, scenario: Callable[[AsyncClient], Awaitable[None]]) -> None:
    async def go() -> None:
        client = AsyncClient(Connection.load(kube.kubeconfig_path), user_agent=f"events-test/{ns}")
        try:
            await scenario(client)
        finally:
            await client.close()

    asyncio.run(go())


def posts(kube: LocalCluster, ns: str, since: int) -> list[float]:
    return [
        r.time
        for r in kube.requests_made(since)
        if r.user_agent == f"events-test/{ns}" and r.resource == "events" and r.method == "POST"
    ]


async def until_sent(recorder: EventRecorder, count: int, timeout: float = 5.0) -> float:
    """Wait until ``count`` Events were posted or refused; returns the seconds it took."""
    start = time.monotonic()
    while recorder.posted + recorder.failed < count:
        assert time.monotonic() - start < timeout, f"{recorder.posted} posted, {recorder.failed} refused"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def obj(ns: str, name: str) -> dict[str, Any]:
    return sandbox_obj(name, ns)


def test_held_events_wait_while_the_decisions_are_busy_and_urgent_ones_do_not(
    kube: LocalCluster, kube_namespace: str
) -> None:
    ns = kube_namespace
    busy = True

    async def scenario(client: AsyncClient) -> None:
        quiet_since = 0.0

        def idle_for() -> float:
            return 0.0 if busy else time.monotonic() - quiet_since

        recorder = EventRecorder(client, quiet=0.2, max_delay=30.0, idle_for=idle_for)
        recorder.start()
        recorder.record(obj(ns, "a"), "Scheduled", "placed on node n", hold=True)
        await asyncio.sleep(0.5)
        assert recorder.posted == 0 and len(recorder) == 1  # held back while busy
        recorder.record(obj(ns, "a2"), "NodeLost", "node n lost", warning=True)
        await until_sent(recorder, 1)  # an urgent one is not held back, nor stuck behind a held one
        await asyncio.sleep(0.2)
        assert recorder.posted == 1 and len(recorder) == 1
        nonlocal busy
        busy, quiet_since = False, time.monotonic()
        await asyncio.sleep(0.1)
        assert recorder.posted == 1  # not quiet for long enough yet
        await until_sent(recorder, 2)
        assert time.monotonic() - quiet_since >= 0.2
        await recorder.stop()

    run(kube, ns, scenario)
    assert [e["reason"] for e in events_for(kube, ns, "a")] == ["Scheduled"]
    assert [e["reason"] for e in events_for(kube, ns, "a2")] == ["NodeLost"]


def test_a_busy_operator_holds_events_back_at_most_max_delay(kube: LocalCluster, kube_namespace: str) -> None:
    ns = kube_namespace

    async def scenario(client: AsyncClient) -> None:
        recorder = EventRecorder(client, quiet=0.1, max_delay=0.3, idle_for=lambda: 0.0)
        recorder.start()
        recorder.record(obj(ns, "b"), "Scheduled", "placed", hold=True)
        assert await until_sent(recorder, 1) >= 0.29
        await recorder.stop()

    run(kube, ns, scenario)


def test_a_repeated_event_is_one_event_with_a_count(kube: LocalCluster, kube_namespace: str) -> None:
    ns = kube_namespace

    async def scenario(client: AsyncClient) -> None:
        recorder = EventRecorder(client, max_delay=30.0, idle_for=lambda: 0.0)
        recorder.start()
        sandbox = obj(ns, "c")
        for _ in range(3):
            recorder.record(sandbox, "FailedScheduling", "0/1 nodes available", hold=True, warning=True)
        recorder.record(sandbox, "FailedScheduling", "0/2 nodes available", hold=True, warning=True)
        assert len(recorder) == 2
        await recorder.stop()
        assert recorder.posted == 2

    run(kube, ns, scenario)
    counts = {e["message"]: e["count"] for e in events_for(kube, ns, "c")}
    assert counts == {"0/1 nodes available": 3, "0/2 nodes available": 1}


def test_a_full_queue_drops_the_oldest_and_counts_each_drop(kube: LocalCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    drops: list[int] = []

    async def scenario(client: AsyncClient) -> None:
        recorder = EventRecorder(
            client, limit=3, max_delay=30.0, idle_for=lambda: 0.0, on_drop=lambda: drops.append(1)
        )
        recorder.start()
        for i in range(5):
            recorder.record(obj(ns, f"d{i}"), "Scheduled", "placed", hold=True)
        assert len(recorder) == 3 and recorder.dropped == 2
        await recorder.stop()  # stopping flushes what waits, held back or not
        assert recorder.posted == 3

    run(kube, ns, scenario)
    assert len(drops) == 2
    assert [bool(events_for(kube, ns, f"d{i}")) for i in range(5)] == [False, False, True, True, True]


def test_posting_is_rate_limited_and_a_refused_post_does_not_stop_the_rest(
    kube: LocalCluster, kube_namespace: str
) -> None:
    ns = kube_namespace
    since = len(kube.requests_made())

    async def scenario(client: AsyncClient) -> None:
        recorder = EventRecorder(client, qps=10.0, burst=2)
        recorder.start()
        recorder.record(obj("Not_A_Namespace", "x"), "Scheduled", "placed")
        for i in range(6):
            recorder.record(obj(ns, f"r{i}"), "Scheduled", "placed")
        await until_sent(recorder, 7, timeout=10)
        assert (recorder.posted, recorder.failed) == (6, 1)
        await recorder.stop()

    run(kube, ns, scenario)
    times = posts(kube, ns, since)
    assert len(times) == 7
    # 2 at once from the burst allowance, then one each 100 ms: 5 more take >= 0.5 s.
    assert times[-1] - times[0] >= 0.45, times


def test_what_stop_cannot_post_in_time_is_counted_as_dropped(kube: LocalCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    drops: list[int] = []

    async def scenario(client: AsyncClient) -> None:
        recorder = EventRecorder(client, qps=2.0, burst=1, on_drop=lambda: drops.append(1))
        recorder.start()
        for i in range(5):
            recorder.record(obj(ns, f"s{i}"), "NodeLost", "lost", warning=True)
        await recorder.stop(flush_timeout=0.8)
        assert recorder.posted + recorder.dropped == 5
        assert 1 <= recorder.posted <= 3 and len(recorder) == 0

    run(kube, ns, scenario)
    assert len(drops) >= 2
