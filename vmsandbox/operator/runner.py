"""One operator instance: kopf watching, the reconcile workers, the leader Lease, metrics and Events.

Every replica runs kopf (so its cache is warm and its liveness probe answers), but only the
replica holding the leader Lease writes. On winning the Lease it re-lists sandboxes, nodes
and agent Leases, forgets reservations of any previous term and looks at every sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from aiohttp import web

from vmsandbox.kube import ApiError, Connection
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.paths import lease_path, node_path, sandbox_path
from vmsandbox.operator.cache import ClusterCache, Kind
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.events import EventRecorder
from vmsandbox.operator.handlers import build_registry
from vmsandbox.operator.leader import LeaderElector
from vmsandbox.operator.metrics import OperatorMetrics, serve_metrics
from vmsandbox.operator.poolcontroller import PoolController, PoolMetrics
from vmsandbox.operator.reconciler import Reconciler
from vmsandbox.operator.subresources.server import start_subresources

log = logging.getLogger("vmsandbox.operator")

#: kopf's own finalizer and annotation prefix, distinct from the agent's; no handler needs them,
#: they only keep kopf from ever touching ``vmsandbox.io/operator`` or the agent's marks.
KOPF_FINALIZER = "operator.vmsandbox.io/kopf"
KOPF_PREFIX = "operator.vmsandbox.io"


class Operator:
    def __init__(self, config: OperatorConfig, connection: Connection) -> None:
        self.config = config
        self.connection = connection
        self.client = AsyncClient(connection, user_agent=f"vmsandbox-operator/{config.identity}")
        self.cache = ClusterCache(config)
        self.metrics = OperatorMetrics()
        self.events = EventRecorder(
            self.client,
            enabled=config.events,
            host=config.identity,
            on_drop=self.metrics.events_dropped.inc,
        )
        self.elector: LeaderElector | None = None
        if config.leader_election:
            self.elector = LeaderElector(
                self.client,
                namespace=config.namespace,
                name=config.lease_name,
                identity=config.identity,
                lease_duration=config.lease_duration_seconds,
                renew_deadline=config.renew_deadline_seconds,
                retry_period=config.retry_period_seconds,
                on_started=self._started_leading,
                on_stopped=self._stopped_leading,
            )
        self.reconciler = Reconciler(config, self.client, self.cache, self.metrics, self.events, self.leading)
        self.events.idle_for = self.reconciler.queue.idle_for  # Events wait for the decisions
        self.pools = PoolController(
            config,
            self.client,
            self.cache,
            self.reconciler.ledger,
            PoolMetrics(self.metrics.registry),
            self.leading,
            self.reconciler.retry_unschedulable,
        )
        self.reconciler.pools = self.pools
        self.registry = build_registry(self)
        self._term_ready = False  # the cache was re-listed in the current term

    def leading(self) -> bool:
        if not self._term_ready:
            return False
        return self.elector.leading if self.elector is not None else True

    def delivered(self, kind: Kind, event_type: str | None, raw: dict[str, Any]) -> None:
        """A watch event as kopf hands it over (type None: an object of kopf's own first list)."""
        if event_type == "DELETED":
            self.gone(kind, raw)
        else:
            self.watched(kind, raw)

    def gone(self, kind: Kind, raw: dict[str, Any]) -> None:
        """An object of ``kind`` deleted: out of the cache, and on to whatever it frees."""
        if kind == "sandbox":
            self.reconciler.sandbox_gone(raw)
            self.pools.changed()
        elif kind == "node":
            self.cache.forget_node(raw)
            self.reconciler.retry_unschedulable()
            self.pools.changed()
        elif kind == "pool":
            self.pools.pool_gone(raw)
        else:
            self.cache.forget_lease(raw)

    def watched(self, kind: Kind, raw: dict[str, Any]) -> None:
        """An object of ``kind`` added or changed, as the watch delivered it: into the cache, and
        on to whatever it may unblock."""
        if kind == "sandbox":
            self.reconciler.sandbox_changed(raw)
            self.pools.changed()
        elif kind == "node":
            if self.cache.upsert_node(raw):  # labels, taints, capacity or the agents' pool reports
                self.reconciler.retry_unschedulable()
                self.pools.changed()
        elif kind == "pool":
            self.pools.pool_changed(raw)
        else:
            self.lease_changed(raw)  # agents coming and going reach the pools at their next pass

    def replay_lapsed(self) -> None:
        """Apply the watch events the cache held back for a version that never came."""
        for kind, raw in self.cache.lapsed_events():
            self.watched(kind, raw)

    def lease_changed(self, raw: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        window = self.config.agent_alive_seconds
        before = {n: v.agent_alive(now, window) for n, v in self.cache.node_views().items()}
        node = self.cache.upsert_lease(raw) or ""
        if not node:
            return
        view = self.cache.node_views().get(node)
        if view is not None and view.agent_alive(now, window) and not before.get(node, False):
            self.reconciler.retry_unschedulable()
            for key, entry in self.cache.sandboxes.items():
                if entry.node == node:
                    self.reconciler.queue.add(key)

    def settings(self) -> kopf.OperatorSettings:
        settings = kopf.OperatorSettings()
        settings.persistence.finalizer = KOPF_FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_PREFIX, key="last-handled-configuration"
        )
        settings.posting.enabled = False  # Events are the reconciler's, posted by EventRecorder
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        if self.config.webhook:
            settings.admission.server = kopf.WebhookServer(
                addr=self.config.webhook_host,
                port=self.config.webhook_port,
                certfile=str(self.config.webhook_certfile) if self.config.webhook_certfile else None,
                pkeyfile=str(self.config.webhook_keyfile) if self.config.webhook_keyfile else None,
                insecure=self.config.webhook_certfile is None,
            )
            settings.admission.managed = None
        return settings

    async def _resync(self) -> None:
        """A fresh LIST of everything the decisions depend on, merged with what the watch
        delivers meanwhile (see :mod:`vmsandbox.operator.cache`)."""
        kinds = ("node", "lease", "sandbox")
        self.cache.begin_list(*kinds)
        try:
            nodes = await self.client.list_objects(node_path())
            for item in nodes.get("items") or []:
                item.setdefault("apiVersion", "v1")
                self.cache.upsert_node(item, "list")
            leases = await self.client.list_objects(lease_path(self.config.namespace))
            for item in leases.get("items") or []:
                self.cache.upsert_lease(item, "list")
            sandboxes = await self.client.list_objects(sandbox_path())
            for item in sandboxes.get("items") or []:
                self.cache.upsert_sandbox(item, "list")
        finally:
            self.cache.end_list(*kinds)
        await self.pools.resync()

    async def _started_leading(self) -> None:
        self._term_ready = False
        self.reconciler.reset()
        self.cache.restart_lease_clocks()  # what this replica missed while not leading is no silence
        while True:
            try:
                await self._resync()
                break
            except ApiError as exc:
                log.warning("re-list after winning the lease failed: %s", exc)
                await asyncio.sleep(1.0)
        self._term_ready = True
        self.metrics.leader.set(1)
        self.reconciler.enqueue_all()

    async def _stopped_leading(self) -> None:
        self._term_ready = False
        self.metrics.leader.set(0)
        self.reconciler.reset()

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_seconds)
            self.replay_lapsed()
            if self.leading():
                await self.reconciler.sweep()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set; ``ready`` is set once kopf watches and this replica may lead."""
        kopf_ready = asyncio.Event()
        metrics_runner: web.AppRunner | None = None
        if self.config.metrics_port is not None:
            metrics_runner = await serve_metrics(
                self.metrics,
                self.config.metrics_host,
                self.config.metrics_port,
                self.reconciler.refresh_metrics,
            )
        subresources = (
            await start_subresources(self.config, self.client, self.cache)
            if self.config.subresources
            else None
        )
        self.events.start()
        background: list[asyncio.Task[Any]] = [
            asyncio.create_task(self.reconciler.worker(), name=f"worker-{i}")
            for i in range(self.config.workers)
        ]
        background.append(asyncio.create_task(self._sweeper(), name="sweeper"))
        background.append(asyncio.create_task(self.pools.run(), name="pools"))
        kopf_task = asyncio.create_task(
            kopf.operator(
                registry=self.registry,
                settings=self.settings(),
                clusterwide=True,
                standalone=True,
                liveness_endpoint=self.config.liveness_endpoint,
                stop_flag=stop,
                ready_flag=kopf_ready,
            ),
            name="kopf",
        )
        elector_task: asyncio.Task[None] | None = None
        try:
            await _first(kopf_ready.wait(), kopf_task)
            if self.elector is not None:
                elector_task = asyncio.create_task(self.elector.run(stop), name="leader-election")
            else:
                await self._started_leading()
            if ready is not None:
                ready.set()
            await _first(stop.wait(), kopf_task)
        finally:
            stop.set()
            if elector_task is not None:
                with contextlib.suppress(asyncio.CancelledError, ApiError):
                    await asyncio.wait_for(elector_task, 5.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(kopf_task, 10.0)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.reconciler.queue.close()
            await self.events.stop()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            if subresources is not None:
                await subresources.cleanup()
            await self.client.close()
        if kopf_task.done() and not kopf_task.cancelled() and kopf_task.exception() is not None:
            raise kopf_task.exception()  # type: ignore[misc]


async def _first(waiter: Any, task: asyncio.Task[Any]) -> None:
    """Wait for ``waiter`` unless ``task`` ends first (then its error propagates)."""
    wait_task = asyncio.ensure_future(waiter)
    try:
        await asyncio.wait({wait_task, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not wait_task.done():
            wait_task.cancel()
    if task.done() and not wait_task.done():
        task.result()
