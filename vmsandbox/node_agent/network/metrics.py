"""Per-sandbox traffic and policy drops on ``/metrics``, read from the table's counters at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from vmsandbox.node_agent.network.node import NodeNetwork

#: uid -> (namespace, name), None for a sandbox the agent no longer knows.
Names = Callable[[str], tuple[str, str] | None]


class NetworkCollector(Collector):
    def __init__(self, network: NodeNetwork, names: Names) -> None:
        self._network = network
        self._names = names

    def collect(self) -> Iterator[CounterMetricFamily]:
        labels = ["namespace", "name", "direction"]
        traffic = CounterMetricFamily(
            "vmsandbox_agent_sandbox_network_bytes",
            "Bytes sent (tx) and received (rx) by a sandbox.",
            labels=labels,
        )
        packets = CounterMetricFamily(
            "vmsandbox_agent_sandbox_network_packets",
            "Packets sent and received by a sandbox.",
            labels=labels,
        )
        drops = CounterMetricFamily(
            "vmsandbox_agent_sandbox_network_policy_drops",
            "Packets from or to a sandbox dropped by its egress policy.",
            labels=["namespace", "name"],
        )
        for owner, counters in self._network.counters().items():
            named = self._names(owner)
            if named is None:
                continue
            traffic.add_metric([*named, "tx"], counters.tx_bytes)
            traffic.add_metric([*named, "rx"], counters.rx_bytes)
            packets.add_metric([*named, "tx"], counters.tx_packets)
            packets.add_metric([*named, "rx"], counters.rx_packets)
            drops.add_metric(list(named), counters.dropped_packets)
        yield from (traffic, packets, drops)
