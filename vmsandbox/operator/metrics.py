"""Prometheus metrics, each operator instance with its own registry (several may share a process in tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from vmsandbox.metrics import MetricFamilies

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperatorMetrics(MetricFamilies):
    def __init__(self) -> None:
        super().__init__()
        self.scheduling_latency = self.histogram(
            "vmsandbox_operator_scheduling_latency_seconds",
            "From the operator first seeing a pending sandbox to its placement being recorded.",
            _LATENCY_BUCKETS,
        )
        self.sandboxes = self.gauge("vmsandbox_operator_sandboxes", "Sandboxes by phase.", ["phase"])
        self.scheduled = self.counter("vmsandbox_operator_scheduled", "Placements recorded.")
        self.unschedulable = self.gauge(
            "vmsandbox_operator_unschedulable_sandboxes", "Sandboxes no node currently fits."
        )
        self.unschedulable_decisions = self.counter(
            "vmsandbox_operator_unschedulable_decisions", "Scheduling attempts that found no node."
        )
        self.reschedules = self.counter(
            "vmsandbox_operator_reschedules", "Sandboxes sent back to Pending after node loss."
        )
        self.node_lost = self.counter("vmsandbox_operator_node_lost", "Sandboxes failed with NodeLost.")
        self.evictions_paused = self.gauge(
            "vmsandbox_operator_evictions_paused",
            "1 while too many nodes look lost at once for any sandbox to be declared NodeLost.",
        )
        self.unreachable_nodes = self.gauge(
            "vmsandbox_operator_unreachable_nodes",
            "Nodes whose agent has been silent longer than agentAliveSeconds.",
        )
        self.leader = self.gauge("vmsandbox_operator_leader", "1 while this replica is the active leader.")
        self.reconcile_errors = self.counter(
            "vmsandbox_operator_reconcile_errors", "Reconciles that failed and were retried.", ["kind"]
        )
        self.conflicts = self.counter(
            "vmsandbox_operator_write_conflicts", "Writes that lost a compare-and-swap and were redone."
        )
        self.events_dropped = self.counter(
            "vmsandbox_operator_events_dropped", "Events dropped unposted because too many were waiting."
        )

    def set_phases(self, counts: Mapping[str, int]) -> None:
        self.sandboxes.clear()
        for phase, n in counts.items():
            self.sandboxes.labels(phase=phase).set(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(
    metrics: OperatorMetrics, host: str, port: int, refresh: Callable[[], None]
) -> web.AppRunner:
    """``GET /metrics`` on ``host:port``; ``refresh`` updates the gauges computed from the cache."""

    async def handle(_: web.Request) -> web.Response:
        refresh()
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
