"""Prometheus metrics of the pools on this node: members ready and booting, claims, replenish times."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vmsandbox.metrics import MetricFamilies

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
Counts = Callable[[], dict[str, tuple[int, int]]]
Paused = Callable[[], dict[str, bool]]


class _MemberCollector(Collector):
    def __init__(self, counts: Counts, claimed: Callable[[], dict[str, int]], paused: Paused) -> None:
        self._counts = counts
        self._claimed = claimed
        self._paused = paused

    def collect(self) -> Iterator[GaugeMetricFamily]:
        members = GaugeMetricFamily(
            "vmsandbox_agent_pool_members",
            "Pool members on this node: ready (idle, claimable) or booting.",
            labels=["namespace", "pool", "state"],
        )
        for key, (ready, booting) in sorted(self._counts().items()):
            namespace, pool = key.split("/", 1)
            members.add_metric([namespace, pool, "ready"], ready)
            members.add_metric([namespace, pool, "booting"], booting)
        yield members
        yield _per_pool(
            "vmsandbox_agent_pool_claimed",
            "Sandboxes on this node running in a VM claimed from a pool.",
            self._claimed(),
        )
        yield _per_pool(
            "vmsandbox_agent_pool_paused",
            "1 while the agent holds the pool paused (spec.paused: no member made or replaced), else 0.",
            {key: int(paused) for key, paused in self._paused().items()},
        )


def _per_pool(name: str, documentation: str, values: dict[str, int]) -> GaugeMetricFamily:
    """A gauge with one sample per ``namespace/pool`` key."""
    gauge = GaugeMetricFamily(name, documentation, labels=["namespace", "pool"])
    for key, value in sorted(values.items()):
        namespace, pool = key.split("/", 1)
        gauge.add_metric([namespace, pool], value)
    return gauge


class PoolMetrics(MetricFamilies):
    def __init__(self, registry: CollectorRegistry, claimed: Callable[[], dict[str, int]]) -> None:
        super().__init__(registry)
        self._claimed = claimed
        self.claims = self.counter(
            "vmsandbox_agent_pool_claims",
            "Sandboxes naming a pool, by outcome: warm (a member taken) or cold, with the reason.",
            ["namespace", "pool", "outcome", "reason"],
        )
        self.replenish = self.histogram(
            "vmsandbox_agent_pool_replenish_seconds",
            "Seconds from starting a member's boot to its guest agent being ready.",
            _BUCKETS,
            ["namespace", "pool"],
        )
        self.boot_failures = self.counter(
            "vmsandbox_agent_pool_member_boot_failures",
            "Pool members whose boot failed.",
            ["namespace", "pool"],
        )

    def track(self, counts: Counts, paused: Paused) -> None:
        self.registry.register(_MemberCollector(counts, self._claimed, paused))
