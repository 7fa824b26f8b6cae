"""Running an operator in-process against the local control plane, and fake node agents.

A fake agent does exactly what the contract asks of a real one for scheduling: a Node with
the ``vmsandbox.io/agent=ready`` label, the capacity annotation, and a renewed Lease. It runs
no VMs; the end-to-end tests use the real agent.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.operator.factories import lease_obj, micro, node_obj
from tests.polling import wait_for as wait_for
from vmsandbox.api.constants import AGENT_LEASE_PREFIX
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.kube import Connection
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.runner import Operator

SANDBOXES = "/apis/vmsandbox.io/v1alpha1/namespaces/{ns}/vmsandboxes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def operator_config(namespace: str, **overrides: Any) -> OperatorConfig:
    """Short periods so node loss and fail-over happen within seconds."""
    values: dict[str, Any] = {
        "namespace": namespace,
        "lease_name": "vmsandbox-operator",
        "agent_alive_seconds": 3.0,
        "node_lost_grace_seconds": 5.0,
        "lease_duration_seconds": 4.0,
        "renew_deadline_seconds": 3.0,
        "retry_period_seconds": 0.5,
        "sweep_seconds": 0.5,
        "unschedulable_backoff_seconds": 0.5,
        "unschedulable_backoff_max_seconds": 2.0,
        "liveness_endpoint": f"http://127.0.0.1:{free_port()}/healthz",
        "metrics_port": free_port(),
        "metrics_host": "127.0.0.1",
        # As an admin who enabled QEMU on purpose: the default allows cloud-hypervisor only.
        "allowed_hypervisors": ["cloud-hypervisor", "qemu"],
    }
    values.update(overrides)
    return OperatorConfig(**values)


class OperatorThread:
    """An :class:`Operator` on its own event loop in a thread; ``stop()`` shuts it down cleanly."""

    def __init__(self, config: OperatorConfig, kubeconfig: Path) -> None:
        self.config = config
        self.operator = Operator(config, Connection.load(kubeconfig))
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"operator-{config.identity}", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def go() -> None:
            ready = asyncio.Event()
            waiter = asyncio.create_task(ready.wait())
            waiter.add_done_callback(lambda _: self._ready.set())
            await self.operator.run(self._stop, ready)

        try:
            self._loop.run_until_complete(go())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            self._loop.close()

    def start(self, timeout: float = 30.0) -> OperatorThread:
        self._thread.start()
        assert self._ready.wait(timeout), "operator did not become ready"
        assert self.error is None, f"operator failed: {self.error!r}"
        return self

    def leading(self) -> bool:
        return self.operator.leading()

    def stop(self, timeout: float = 20.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        assert not self._thread.is_alive(), "operator thread did not stop"

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextmanager
def leading_operator(config: OperatorConfig, kubeconfig: Path) -> Iterator[OperatorThread]:
    """An operator thread for the test, once it has taken the leadership (stopped at the end)."""
    with OperatorThread(config, kubeconfig) as op:
        wait_for("leadership", op.leading)
        yield op


class FakeAgents:
    """Nodes plus agent Leases renewed by a background thread until stopped (or per node, killed)."""

    def __init__(self, kube: LocalCluster, namespace: str, period: float = 1.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.period = period
        self.alive: set[str] = set()
        self.nodes: set[str] = set()
        self.skew: dict[str, float] = {}  # node -> seconds its clock is ahead (negative: behind)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True)
        self._thread.start()

    def add(self, *names: str, **node_kw: Any) -> None:
        """A live Node and agent Lease for each name, all nodes alike (``node_kw``)."""
        for name in names:
            resp = self.kube.http("POST", "/api/v1/nodes", json=node_obj(name, **node_kw))
            assert resp.status_code == 201, resp.text
            lease = lease_obj(name, self.namespace, age=-self.skew.get(name, 0.0))
            resp = self.kube.http(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", json=lease
            )
            assert resp.status_code == 201, resp.text
            self.nodes.add(name)
            self.alive.add(name)

    def kill(self, name: str) -> None:
        self.alive.discard(name)

    def revive(self, name: str) -> None:
        self.renew(name)
        self.alive.add(name)

    def renew(self, name: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{AGENT_LEASE_PREFIX}{name}"
        renewed = datetime.now(UTC) + timedelta(seconds=self.skew.get(name, 0.0))
        body = {"spec": {"renewTime": micro(renewed)}}
        self.kube.http("PATCH", path, json=body, headers={"Content-Type": "application/merge-patch+json"})

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.period):
            for name in list(self.alive):
                self.renew(name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for name in self.nodes:
            self.kube.http("DELETE", f"/api/v1/nodes/{name}")


def micro_now() -> str:
    return micro(datetime.now(UTC))


def create_sandbox(kube: LocalCluster, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in obj.items() if k != "status"}
    body["metadata"] = {k: v for k, v in obj["metadata"].items() if k in ("name", "labels", "annotations")}
    resp = kube.http("POST", SANDBOXES.format(ns=namespace), json=body)
    assert resp.status_code == 201, resp.text
    result: dict[str, Any] = resp.json()
    return result


def get_object(kube: LocalCluster, path: str) -> dict[str, Any] | None:
    """The object at ``path``, or None when the server says 404."""
    resp = kube.http("GET", path)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def get_sandbox(kube: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    return get_object(kube, SANDBOXES.format(ns=namespace) + f"/{name}")


def list_sandboxes(kube: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    resp = kube.http("GET", SANDBOXES.format(ns=namespace))
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def phase(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def in_phase(kube: LocalCluster, namespace: str, name: str, *phases: str) -> dict[str, Any] | None:
    """The sandbox while it is in one of ``phases``, else None: a check to :func:`wait_for`."""
    obj = get_sandbox(kube, namespace, name)
    return obj if phase(obj) in phases else None


def scheduled(kube: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    return in_phase(kube, namespace, name, "Scheduled")


def wait_phase(kube: LocalCluster, namespace: str, name: str, want: str, what: str) -> dict[str, Any]:
    """The sandbox once it has reached phase ``want``; a timeout names ``what`` was awaited."""
    return wait_for(what, lambda: in_phase(kube, namespace, name, want))


def events_for(kube: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    resp = kube.http("GET", f"/api/v1/namespaces/{namespace}/events")
    assert resp.status_code == 200, resp.text
    return [e for e in resp.json()["items"] if (e.get("involvedObject") or {}).get("name") == name]


def wait_events(
    kube: LocalCluster, namespace: str, name: str, *reasons: str, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The object's Events once one of each of ``reasons`` is there: the operator posts Events off
    its decision path (a Scheduled one waits for a quiet queue), so they follow the write they tell of."""

    def arrived() -> list[dict[str, Any]] | None:
        events = events_for(kube, namespace, name)
        return events if set(reasons) <= {e["reason"] for e in events} else None

    found: list[dict[str, Any]] = wait_for(f"{name}'s events {reasons}", arrived, timeout=timeout)
    return found


def purge(kube: LocalCluster, namespace: str, names: Iterable[str] | None = None) -> None:
    """Remove every sandbox in ``namespace``, finalizers included (no operator needed)."""
    for item in list_sandboxes(kube, namespace):
        name = item["metadata"]["name"]
        if names is not None and name not in names:
            continue
        path = SANDBOXES.format(ns=namespace) + f"/{name}"
        kube.http(
            "PATCH",
            path,
            json={"metadata": {"finalizers": None}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        kube.http("DELETE", path)


def without_stale_nodes(message: str) -> str:
    """An unschedulable message minus its count and the nodes other tests left behind (agent not ready).

    Node objects are cluster-scoped and outlive the tests that made them; their agents are gone.
    """
    detail = message.split(": ", 1)[1] if message.startswith("0/") else message
    groups = [g for g in detail.split("; ") if not g.endswith(": agent not ready")]
    return "; ".join(groups)
