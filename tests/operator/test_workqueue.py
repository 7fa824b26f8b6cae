"""The operator's work queue: de-duplication, no key in two workers, and per-key back-off."""

from __future__ import annotations

import asyncio

import pytest

from vmsandbox.operator.workqueue import WorkQueue


async def _drain(queue: WorkQueue) -> list[str]:
    got = []
    while len(queue):
        key = await queue.get()
        got.append(key)
        queue.done(key)
    return got


def test_a_key_is_queued_once() -> None:
    async def run() -> list[str]:
        queue = WorkQueue()
        for key in ("a", "b", "a", "a"):
            queue.add(key)
        return await _drain(queue)

    assert asyncio.run(run()) == ["a", "b"]


def test_a_key_added_while_active_comes_back_after_done() -> None:
    async def run() -> tuple[int, str]:
        queue = WorkQueue()
        queue.add("a")
        key = await queue.get()
        queue.add("a")  # changed while being worked on: not handed to a second worker
        during = len(queue)
        queue.done(key)
        return during, await queue.get()

    during, again = asyncio.run(run())
    assert during == 0
    assert again == "a"


def test_failures_back_off_exponentially_to_the_cap_and_forget_resets() -> None:
    async def run() -> tuple[list[float], float]:
        queue = WorkQueue(base=0.5, cap=4.0)
        delays = [queue.retry("a") for _ in range(6)]
        queue.forget("a")
        after = queue.retry("a")
        queue.close()
        return delays, after

    delays, after = asyncio.run(run())
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert after == 0.5


def test_a_servers_retry_after_longer_than_the_back_off_wins_and_still_counts_a_failure() -> None:
    async def run() -> list[float]:
        queue = WorkQueue(base=0.5, cap=4.0)
        delays = [queue.retry("a", at_least=3.0), queue.retry("a", at_least=0.2), queue.retry("a")]
        queue.close()
        return delays

    assert asyncio.run(run()) == [3.0, 1.0, 2.0]


def test_a_retry_after_beyond_the_cap_waits_only_the_cap() -> None:
    async def run() -> float:
        queue = WorkQueue(base=0.5, cap=4.0)
        delay = queue.retry("a", at_least=86400.0)
        queue.close()
        return delay

    assert asyncio.run(run()) == 4.0


def test_one_failing_key_does_not_delay_another() -> None:
    async def run() -> tuple[float, float]:
        queue = WorkQueue(base=0.01, cap=10.0)
        for _ in range(6):  # fails each time it is worked on
            queue.retry("bad")
            queue.done(await asyncio.wait_for(queue.get(), 5))
        assert queue.retry("bad") == pytest.approx(0.64)
        quick = queue.retry("good")
        loop = asyncio.get_running_loop()
        start = loop.time()
        key = await asyncio.wait_for(queue.get(), 5)
        assert key == "good"
        waited = loop.time() - start
        queue.done(key)
        queue.close()
        return quick, waited

    quick, waited = asyncio.run(run())
    assert quick == pytest.approx(0.01)
    assert waited < 0.5


def test_a_retried_key_comes_back_after_its_delay() -> None:
    async def run() -> float:
        queue = WorkQueue(base=0.2, cap=1.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        queue.retry("a")
        assert len(queue) == 0
        key = await asyncio.wait_for(queue.get(), 5)
        queue.done(key)
        return loop.time() - start

    assert asyncio.run(run()) >= 0.19
