"""The node's sandbox network: leases, links and policy kept consistent with each other.

The agent asks for a sandbox's network before it boots the VM (:meth:`NodeNetwork.attach`)
and gives it back after the VM is gone (:meth:`NodeNetwork.detach`). At start-up,
:meth:`NodeNetwork.reconcile` makes the node match the leases of the sandboxes the agent still
owns: it frees every other lease, link and namespace, and rewrites the whole nftables table.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.node_agent.network import announce, links, policy
from vmsandbox.node_agent.network.commands import Host
from vmsandbox.node_agent.network.errors import NetworkError
from vmsandbox.node_agent.network.ipam import Ipam, Lease, link_local_of, mac_of

log = logging.getLogger("vmsandbox.node_agent.network")

#: How the sandbox's side is made: a veth in a namespace (process backend) or a tap (VMs).
KINDS = ("netns", "tap")
#: Anything else is refused: the table treats every mode but ``restricted`` as open.
MODES = ("none", "restricted", "open")


@dataclass(frozen=True)
class NetworkSettings:
    """The node-level choices, from the agent's configuration."""

    subnet: ipaddress.IPv4Network
    state_dir: Path
    #: The IPv6 prefix (a ULA); None: sandboxes get IPv4 only.
    prefix6: ipaddress.IPv6Network | None = None
    bridge: str = "vmsb0"
    table: str = "vmsandbox"
    resolvers: tuple[str, ...] = ()
    #: Where the plumbing lives; None: the agent's own network namespace (the node's).
    netns: Path | None = None
    #: (uid, gid) owning each VM's tap: the VMM user; None: root.
    tap_owner: tuple[int, int] | None = None


@dataclass
class SandboxCounters:
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    dropped_packets: int = 0


def owner_key(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:12]


class NodeNetwork:
    def __init__(self, settings: NetworkSettings) -> None:
        self.settings = settings
        self.ipam = Ipam(settings.state_dir / "leases", settings.subnet, settings.prefix6)
        self.table = policy.TableConfig(
            table=settings.table,
            bridge=settings.bridge,
            subnet=settings.subnet,
            resolvers=settings.resolvers,
            prefix6=settings.prefix6,
            gateway6=self.ipam.gateway6 or None,
            gateway_link_local=link_local_of(mac_of(self.ipam.gateway)),
        )
        self.host = Host(settings.netns)
        self._lock = threading.Lock()

    @property
    def prefix_length(self) -> int:
        return self.settings.subnet.prefixlen

    def _gateways(self) -> list[str]:
        """The bridge's addresses, ``ADDRESS/PREFIX``: IPv4, and IPv6 and link-local with a prefix."""
        out = [f"{self.ipam.gateway}/{self.prefix_length}"]
        if self.settings.prefix6 is not None:
            out.append(f"{self.ipam.gateway6}/{self.settings.prefix6.prefixlen}")
            out.append(f"{self.table.gateway_link_local}/64")
        return out

    def _addresses(self, lease: Lease) -> tuple[list[str], list[str]]:
        """The sandbox's addresses (``ADDRESS/PREFIX``) and the gateways of its default routes."""
        addresses, gateways = [f"{lease.ip}/{self.prefix_length}"], [self.ipam.gateway]
        if lease.ip6 and self.settings.prefix6 is not None:
            addresses.append(f"{lease.ip6}/{self.settings.prefix6.prefixlen}")
            addresses.append(f"{link_local_of(lease.mac)}/64")
            gateways.append(self.ipam.gateway6)
        return addresses, gateways

    def attach(
        self, owner: str, mode: str, allow: Iterable[str], deny: Iterable[str], kind: str
    ) -> NetworkAttachment:
        """Lease, link and policy for one sandbox (idempotent: a retry returns the same address)."""
        if kind not in KINDS or mode not in MODES:
            raise NetworkError(f"unknown attachment kind {kind!r} or mode {mode!r}")
        bridge = self.settings.bridge
        key = owner_key(owner)
        if mode == "none":
            netns = links.add_netns(self.host, bridge, key) if kind == "netns" else None
            return NetworkAttachment(netns=netns)
        with self._lock:
            lease = self.ipam.acquire(
                Lease(owner=owner, mode=mode, allow=list(allow), deny=list(deny), kind=kind)
            )
            pending = policy.add(self.host, self.table, lease)
            try:
                try:
                    if kind == "netns":
                        addresses, gateways = self._addresses(lease)
                        netns = links.add_veth(self.host, bridge, key, addresses, gateways, lease.mac)
                        attachment = self._attachment(lease, netns=netns)
                    else:
                        tap = links.add_tap(self.host, bridge, key, self.settings.tap_owner)
                        attachment = self._attachment(lease, tap=tap)
                finally:
                    pending.wait()
            except BaseException:
                self._free(lease)
                raise
            return attachment

    def _attachment(
        self, lease: Lease, *, netns: Path | None = None, tap: str | None = None
    ) -> NetworkAttachment:
        v6 = bool(lease.ip6) and self.settings.prefix6 is not None
        return NetworkAttachment(
            ip=lease.ip,
            prefix_length=self.prefix_length,
            gateway=self.ipam.gateway,
            ip6=lease.ip6 if v6 else None,
            prefix_length6=self.settings.prefix6.prefixlen if self.settings.prefix6 else 64,
            gateway6=self.ipam.gateway6 if v6 else None,
            mac=lease.mac,
            dns=list(self.settings.resolvers),
            netns=netns,
            tap=tap,
            tap_netns=self.settings.netns if tap is not None else None,
        )

    def lease(self, owner: str) -> Lease | None:
        return self.ipam.find(owner)

    def detach(self, owner: str) -> None:
        """Free everything the sandbox had; nothing there is fine."""
        with self._lock:
            lease = self.ipam.find(owner)
            if lease is not None:
                self._free(lease)
            else:  # mode none: a namespace, no lease
                links.remove(self.host, self.settings.bridge, owner_key(owner), "netns")

    def _free(self, lease: Lease) -> None:
        others = [other for other in self.ipam.leases() if other.owner != lease.owner]
        policy.remove(
            self.host,
            self.table,
            lease,
            others,
            lambda: links.remove(self.host, self.settings.bridge, lease.key, lease.kind),
        )
        self.ipam.release(lease)

    def reconcile(self, keep: Iterable[str]) -> None:
        """Make the node hold exactly the networks of ``keep``'s owners (the agent's start-up)."""
        keep_set = set(keep)
        bridge = self.settings.bridge
        with self._lock:
            gateway_mac = mac_of(self.ipam.gateway)
            links.ensure_bridge(self.host, bridge, self._gateways(), gateway_mac)
            self._drop_unreadable_leases()
            kept: list[Lease] = []
            for lease in self.ipam.leases():
                if lease.owner in keep_set:
                    kept.append(self.ipam.refit(lease))
                else:
                    log.info("freeing the network of %s (%s): no sandbox owns it", lease.owner, lease.ip)
                    links.remove(self.host, bridge, lease.key)
                    self.ipam.release(lease)
            policy.rebuild(self.host, self.table, kept)
            for lease in kept:
                # A running VM holds its tap: re-create only a missing one, never replace it.
                if lease.kind == "tap" and not links.link_exists(self.host, links.tap_name(lease.key)):
                    links.add_tap(self.host, bridge, lease.key, self.settings.tap_owner)
                else:
                    links.reattach(self.host, bridge, lease.key)
            wanted = {owner_key(owner) for owner in keep_set}
            for name in links.own_links(self.host):
                if name[3:] not in wanted:
                    links.remove(self.host, bridge, name[3:])
            for ns in links.own_netns(bridge):
                if ns.removeprefix(f"{bridge}-") not in wanted:
                    links.remove(self.host, bridge, ns.removeprefix(f"{bridge}-"))
            # The ports are back on the bridge: tell the sandboxes who the gateway is now.
            announce.announce(self.host, bridge, self.ipam.gateway, gateway_mac, self.ipam.gateway6 or None)

    def _drop_unreadable_leases(self) -> None:
        readable = {lease.ip for lease in self.ipam.leases()}
        for path in self.ipam.dir.iterdir():
            if path.name not in readable:
                path.unlink(missing_ok=True)

    def shutdown(self) -> None:
        """Remove the table and the bridge: only when the node stops hosting sandboxes."""
        with self._lock:
            policy.delete_table(self.host, self.settings.table)
            links.remove_bridge(self.host, self.settings.bridge)

    def counters(self) -> dict[str, SandboxCounters]:
        """Per owner: bytes and packets out and in, packets dropped by the policy (both tables:
        routed packets, and spoofed frames from the sandbox's port)."""
        raw = policy.counters(self.host, self.settings.table)
        out: dict[str, SandboxCounters] = {}
        for lease in self.ipam.leases():
            k = policy.name_of(lease)
            tx, rx, drop, l2drop = (raw.get(f"{k}_{c}", (0, 0)) for c in ("tx", "rx", "drop", "l2drop"))
            out[lease.owner] = SandboxCounters(tx[0], tx[1], rx[0], rx[1], drop[0] + l2drop[0])
        return out
