"""The agent's Prometheus metrics, in a registry of its own (served on ``/metrics``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vmsandbox.api.status import Phase

_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _PhaseCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vmsandbox_agent_sandboxes", "Sandboxes this agent manages, by phase.", labels=["phase"]
        )
        counts = self._counts()
        for phase in Phase:
            family.add_metric([phase.value], counts.get(phase.value, 0))
        yield family


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.boot_stage = Histogram(
            "vmsandbox_agent_boot_stage_seconds",
            "Duration of each stage from pickup to Running.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.step = Histogram(
            "vmsandbox_agent_step_seconds",
            "Duration of the agent's own steps: status writes, bundle, runtime calls, start-slot waits.",
            ["step"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.pull_bytes = Counter(
            "vmsandbox_agent_image_pull_bytes", "Bytes pulled from registries.", registry=r
        )
        self.pull_seconds = Histogram(
            "vmsandbox_agent_image_pull_seconds",
            "Duration of registry pulls.",
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.vmm_failures = Counter(
            "vmsandbox_agent_vmm_failures",
            "VMs that failed to boot or died.",
            ["hypervisor", "kind"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "vmsandbox_agent_watch_restarts", "Watch streams restarted, by cause.", ["reason"], registry=r
        )
        self.status_conflicts = Counter(
            "vmsandbox_agent_status_conflicts",
            "Status writes retried after a resourceVersion conflict.",
            registry=r,
        )
        self.write_retries = Counter(
            "vmsandbox_agent_api_write_retries",
            "API calls of status and finalizer writes repeated after a transient failure.",
            registry=r,
        )
        self.writes_deferred = Counter(
            "vmsandbox_agent_status_writes_deferred",
            "Status changes kept to be sent later because the API server did not take them.",
            registry=r,
        )
        self.fenced = Counter(
            "vmsandbox_agent_fenced_sandboxes",
            "VMs stopped because the agent could not renew its Lease for the node-loss grace.",
            registry=r,
        )
        self.restarts = Counter(
            "vmsandbox_agent_container_restarts", "Containers restarted by restartPolicy.", registry=r
        )
        self.adopted = Counter("vmsandbox_agent_adopted_vms", "Running VMs adopted at start-up.", registry=r)
        self.orphans = Counter(
            "vmsandbox_agent_orphans_torn_down", "VMs torn down without a sandbox.", registry=r
        )
        self.workers = Gauge("vmsandbox_agent_workers", "Reconcile workers alive.", registry=r)

    def track_phases(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_PhaseCollector(counts))
