"""The agent's sandbox network from its configuration, reconciled before any sandbox starts."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from vmsandbox.hypervisor.vmmuser import resolve
from vmsandbox.node_agent.config import AgentConfig
from vmsandbox.node_agent.network.node import NetworkSettings, NodeNetwork


def node_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The node's IPv4 resolvers a sandbox can reach (loopback ones, like a local stub, cannot be)."""
    found = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1])
            except ValueError:
                continue
            if address.version == 4 and not address.is_loopback:
                found.append(str(address))
    return found


#: The /32 the derived IPv6 prefixes share: ``fd`` (a locally assigned ULA) and "vsb".
DERIVED6 = ipaddress.IPv6Network("fd76:7362::/32")


def derived_prefix6(subnet: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """``fd76:7362:<the subnet's 32 bits>::/64``: 10.250.3.0/24 gives fd76:7362:afa:300::/64,
    distinct per node whenever the nodes' IPv4 subnets are."""
    high = int(DERIVED6.network_address) | (int(subnet.network_address) << 64)
    return ipaddress.IPv6Network((high, 64))


def ipv6_enabled(proc: Path = Path("/proc/sys/net/ipv6")) -> bool:
    """Whether this namespace has IPv6: the kernel's (``ipv6.disable=1`` removes it everywhere),
    not turned off for every interface (``net.ipv6.conf.all.disable_ipv6=1``)."""
    try:
        return (proc / "conf" / "all" / "disable_ipv6").read_text().strip() != "1"
    except OSError:
        return False


def sandbox_prefix6(config: AgentConfig) -> ipaddress.IPv6Network | None:
    """The node's IPv6 sandbox prefix: ``sandboxCIDR6``, else derived from ``sandboxCIDR`` on a
    kernel with IPv6; None with ``sandboxCIDR6: none`` or without ``sandboxCIDR``."""
    setting = config.sandbox_cidr6
    if config.sandbox_cidr is None or setting == "none":
        return None
    if isinstance(setting, ipaddress.IPv6Network):
        return setting
    return derived_prefix6(config.sandbox_cidr) if ipv6_enabled() else None


def start_network(config: AgentConfig, owners: Iterable[str]) -> NodeNetwork | None:
    """None without ``sandboxCIDR``; otherwise the node's network holding exactly ``owners``' leases."""
    if config.sandbox_cidr is None:
        return None
    network = NodeNetwork(
        NetworkSettings(
            subnet=config.sandbox_cidr,
            prefix6=sandbox_prefix6(config),
            state_dir=config.state_dir / "network",
            bridge=config.sandbox_bridge,
            resolvers=tuple(config.sandbox_dns or node_resolvers()),
            netns=config.network_namespace,
            tap_owner=tap_owner(config.vmm_user),
        )
    )
    network.reconcile(owners)
    return network


def tap_owner(setting: str | None) -> tuple[int, int] | None:
    """The VMM user's (uid, gid), who opens each VM's tap; None when VMMs run as root.
    ``setting``: the agent's ``vmmUser``; None: ``VMSANDBOX_VMM_USER``, as the drivers read it."""
    user = resolve(os.environ.get("VMSANDBOX_VMM_USER", "") if setting is None else setting)
    return None if user is None else (user.uid, user.gid)
