"""Leader election over a real Lease: one leader, take-over after expiry, hand-over on a clean stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.kube import Connection
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.operator.leader import LeaderElector

pytestmark = pytest.mark.kube


def elector(client: AsyncClient, namespace: str, identity: str) -> LeaderElector:
    return LeaderElector(
        client,
        namespace=namespace,
        name="election",
        identity=identity,
        lease_duration=3.0,
        renew_deadline=2.0,
        retry_period=0.3,
    )


async def until(check, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def test_one_leader_takeover_after_expiry_and_handover_on_stop(
    kube: LocalCluster, kube_namespace: str
) -> None:
    async def scenario() -> None:
        conn = Connection.load(kube.kubeconfig_path)
        clients = [AsyncClient(conn) for _ in range(3)]
        a, b, c = (elector(cl, kube_namespace, name) for cl, name in zip(clients, "abc", strict=True))
        stop_a, stop_b, stop_c = asyncio.Event(), asyncio.Event(), asyncio.Event()
        task_a = asyncio.create_task(a.run(stop_a))
        await until(lambda: a.leading, 10)
        task_b = asyncio.create_task(b.run(stop_b))
        for _ in range(20):  # b never leads while a renews
            await asyncio.sleep(0.1)
            assert a.leading and not b.leading

        # a hangs (no renewals, no release, like a frozen process): it fences itself off after
        # the renew deadline, and b takes over only once the lease duration has passed.
        async def hang() -> bool:
            await asyncio.Event().wait()
            return False

        a._try_acquire_or_renew = hang  # type: ignore[method-assign]
        start = time.monotonic()
        a_stopped: float | None = None
        while not b.leading:
            assert not (a.leading and b.leading), "two leaders at once"
            if a_stopped is None and not a.leading:
                a_stopped = time.monotonic() - start
            assert time.monotonic() - start < 15, "b never took over"
            await asyncio.sleep(0.02)
        waited = time.monotonic() - start
        assert a_stopped is not None and a_stopped <= 2.5, "the frozen leader kept acting"
        assert waited >= 2.5, f"took over after {waited:.1f}s, before the lease could expire"
        task_a.cancel()
        await asyncio.gather(task_a, return_exceptions=True)
        # A clean stop hands the lease over at once.
        task_c = asyncio.create_task(c.run(stop_c))
        await asyncio.sleep(0.5)
        assert not c.leading
        stop_b.set()
        await task_b
        handover = await until(lambda: c.leading, 10)
        assert handover < 2.0, f"hand-over after a clean stop took {handover:.1f}s"
        stop_c.set()
        await task_c
        for cl in clients:
            await cl.close()

    asyncio.run(scenario())
