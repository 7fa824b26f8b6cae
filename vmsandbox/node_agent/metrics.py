"""The agent's Prometheus metrics, in a registry of its own (served on ``/metrics``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vmsandbox.api.status import Phase
from vmsandbox.metrics import MetricFamilies

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


class AgentMetrics(MetricFamilies):
    def __init__(self) -> None:
        super().__init__()
        self.boot_stage = self.histogram(
            "vmsandbox_agent_boot_stage_seconds",
            "Duration of each stage from pickup to Running.",
            _STAGE_BUCKETS,
            ["stage"],
        )
        self.step = self.histogram(
            "vmsandbox_agent_step_seconds",
            "Duration of the agent's own steps: status writes, bundle, runtime calls, start-slot waits.",
            _STAGE_BUCKETS,
            ["step"],
        )
        self.pull_bytes = self.counter("vmsandbox_agent_image_pull_bytes", "Bytes pulled from registries.")
        self.pull_seconds = self.histogram(
            "vmsandbox_agent_image_pull_seconds", "Duration of registry pulls.", _STAGE_BUCKETS
        )
        self.vmm_failures = self.counter(
            "vmsandbox_agent_vmm_failures", "VMs that failed to boot or died.", ["hypervisor", "kind"]
        )
        self.watch_restarts = self.counter(
            "vmsandbox_agent_watch_restarts", "Watch streams restarted, by cause.", ["reason"]
        )
        self.status_conflicts = self.counter(
            "vmsandbox_agent_status_conflicts", "Status writes retried after a resourceVersion conflict."
        )
        self.write_retries = self.counter(
            "vmsandbox_agent_api_write_retries",
            "API calls of status and finalizer writes repeated after a transient failure.",
        )
        self.writes_deferred = self.counter(
            "vmsandbox_agent_status_writes_deferred",
            "Status changes kept to be sent later because the API server did not take them.",
        )
        self.fenced = self.counter(
            "vmsandbox_agent_fenced_sandboxes",
            "VMs stopped because the agent could not renew its Lease for the node-loss grace.",
        )
        self.restarts = self.counter(
            "vmsandbox_agent_container_restarts", "Containers restarted by restartPolicy."
        )
        self.adopted = self.counter("vmsandbox_agent_adopted_vms", "Running VMs adopted at start-up.")
        self.orphans = self.counter("vmsandbox_agent_orphans_torn_down", "VMs torn down without a sandbox.")
        self.workers = self.gauge("vmsandbox_agent_workers", "Reconcile workers alive.")

    def track_phases(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_PhaseCollector(counts))
