"""Sandbox networking on a node: addresses, the bridge and links, and the nftables egress policy."""

from vmsandbox.node_agent.network.errors import AddressesExhausted, NetworkError
from vmsandbox.node_agent.network.node import NetworkSettings, NodeNetwork, SandboxCounters

__all__ = ["AddressesExhausted", "NetworkError", "NetworkSettings", "NodeNetwork", "SandboxCounters"]
