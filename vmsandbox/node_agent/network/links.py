"""The node's sandbox bridge and each sandbox's link to it, made with ``ip``.

Every bridge port is *isolated*: frames between two sandboxes' ports are never forwarded, so
sandboxes reach each other (and everything else) only through the node's routing, where the
nftables policy sees them. No link makes addresses of its own (``addrgenmode none``): the
bridge and the sandboxes' interfaces hold only the addresses given here (with IPv6, the
link-local ones too, the EUI-64 addresses of their MACs), IPv6 ones without duplicate address
detection (``nodad``: the addresses are the node's to hand out, and an address left tentative
would delay every start by a second). The bridge floods multicast instead of
snooping it, so a sandbox's neighbour solicitation for the gateway always reaches the node; the
isolated ports keep it from every other sandbox.

Names: host veth ``vsb<key>``, tap ``tsb<key>`` (15 bytes, the kernel's limit), namespace
``<bridge>-<key>``; reconciliation recognises its own links and namespaces by these.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vmsandbox.node_agent.network.commands import Host
from vmsandbox.node_agent.network.errors import NetworkError

NETNS_DIR = Path("/run/netns")
_OWN_LINK = re.compile(r"^[vt]sb[0-9a-f]{12}$")


def veth_name(key: str) -> str:
    return f"vsb{key}"


def tap_name(key: str) -> str:
    return f"tsb{key}"


def netns_name(bridge: str, key: str) -> str:
    return f"{bridge}-{key}"


def _ip_batch(host: Host, lines: list[str], netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    host.run(argv, stdin="\n".join(lines) + "\n")


def link_exists(host: Host, name: str) -> bool:
    return host.succeeds(["ip", "link", "show", "dev", name])


def ensure_bridge(host: Host, bridge: str, gateways: list[str], mac: str) -> None:
    """The bridge with the gateway addresses (``ADDRESS/PREFIX``, IPv4 and perhaps IPv6) and MAC,
    up, and forwarding on (idempotent).

    The MAC is set, not left to the kernel: a bridge otherwise takes its lowest port's MAC, so
    the gateway's MAC would change under every sandbox when that port leaves or the bridge is
    re-created, and the sandboxes would send to a MAC nobody has until their entries age out.
    """
    lines = []
    if not link_exists(host, bridge):
        lines.append(f"link add name {bridge} type bridge")
        lines.append(f"link set dev {bridge} addrgenmode none")
    lines += [
        f"link set dev {bridge} address {mac}",
        f"link set dev {bridge} type bridge mcast_snooping 0",
        *(_address("replace", gateway, bridge) for gateway in gateways),
        f"link set dev {bridge} up",
    ]
    _ip_batch(host, lines)
    host.enable_forwarding(ipv6=any(":" in gateway for gateway in gateways))


def _address(verb: str, address: str, dev: str) -> str:
    return f"address {verb} {address} dev {dev}" + (" nodad" if ":" in address else "")


def _port(name: str, bridge: str) -> list[str]:
    return [
        f"link set dev {name} addrgenmode none",
        f"link set dev {name} master {bridge}",
        f"link set dev {name} type bridge_slave isolated on",
        f"link set dev {name} up",
    ]


def _batch_or_replace(host: Host, lines: list[str], stale: str, netns: str | None = None) -> None:
    """Run ``lines``; if they fail (a start that died halfway left a link, or a namespace), delete
    ``stale`` (and ``netns``) and retry.

    Not probing first saves a command on every start, which is most of the set-up time.
    """
    try:
        _ip_batch(host, lines)
    except NetworkError:
        _drop_stale(host, stale, netns)
        _ip_batch(host, lines)


def _drop_stale(host: Host, link: str, netns: str | None) -> None:
    """The host end first: deleting it takes its peer at once, a namespace's deletion does not."""
    host.succeeds(["ip", "link", "del", "dev", link])
    if netns is not None and (NETNS_DIR / netns).exists():
        host.run(["ip", "netns", "del", netns])


def add_tap(host: Host, bridge: str, key: str, owner: tuple[int, int] | None = None) -> str:
    """A persistent tap on the bridge for a VM's NIC; the VMM opens it by name, as ``owner``
    (uid, gid: the VMM user, who then needs no CAP_NET_ADMIN for it) or as root."""
    tap = tap_name(key)
    user = f" user {owner[0]} group {owner[1]}" if owner is not None else ""
    _batch_or_replace(host, [f"tuntap add dev {tap} mode tap{user}", *_port(tap, bridge)], tap)
    return tap


def reattach(host: Host, bridge: str, key: str) -> None:
    """Put the sandbox's existing host-side link back on a bridge that was re-created."""
    for name in (veth_name(key), tap_name(key)):
        if link_exists(host, name):
            _ip_batch(host, _port(name, bridge))


def add_netns(host: Host, bridge: str, key: str) -> Path:
    """A namespace of the sandbox's own holding only loopback (mode ``none``)."""
    ns = netns_name(bridge, key)
    if not (NETNS_DIR / ns).exists():
        host.run(["ip", "netns", "add", ns])
    _ip_batch(host, ["link set dev lo up"], ns)
    return NETNS_DIR / ns


def add_veth(host: Host, bridge: str, key: str, addresses: list[str], gateways: list[str], mac: str) -> Path:
    """A namespace whose ``eth0`` is a veth to the bridge, with ``addresses`` (``ADDRESS/PREFIX``)
    and a default route via each of ``gateways`` (one per address family)."""
    ns = netns_name(bridge, key)
    host_link = veth_name(key)
    if (NETNS_DIR / ns).exists():  # a start that died halfway: begin again with a clean namespace
        _drop_stale(host, host_link, ns)
    lines = [f"netns add {ns}", f"link add {host_link} type veth peer name eth0 address {mac} netns {ns}"]
    _batch_or_replace(host, lines + _port(host_link, bridge), host_link, ns)
    _ip_batch(
        host,
        [
            "link set dev lo up",
            "link set dev eth0 addrgenmode none",
            *(_address("add", address, "eth0") for address in addresses),
            "link set dev eth0 up",
            *(f"route add default via {gateway} dev eth0" for gateway in gateways),
        ],
        ns,
    )
    return NETNS_DIR / ns


def remove(host: Host, bridge: str, key: str, kind: str | None = None) -> None:
    """Whatever links and namespace the sandbox has (``kind`` says which; None: look for both).

    The host end of a veth goes first: deleting it removes the pair at once, whereas a
    namespace some process still holds would keep its end alive.
    """
    names = {"netns": [veth_name(key)], "tap": [tap_name(key)]}.get(
        kind or "", [veth_name(key), tap_name(key)]
    )
    for name in names:
        if not host.succeeds(["ip", "link", "del", "dev", name]) and link_exists(host, name):
            host.run(["ip", "link", "del", "dev", name])
    ns = netns_name(bridge, key)
    if (NETNS_DIR / ns).exists():
        host.run(["ip", "netns", "del", ns])


def own_links(host: Host) -> list[str]:
    """Names of the links on this node that look like ours (``vsb…``/``tsb…``)."""
    out = json.loads(host.run(["ip", "-j", "link", "show"]) or "[]")
    return [link["ifname"] for link in out if _OWN_LINK.match(link.get("ifname", ""))]


def own_netns(bridge: str) -> list[str]:
    """Names of the namespaces this bridge's sandboxes would have."""
    if not NETNS_DIR.is_dir():
        return []
    prefix = f"{bridge}-"
    return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)]


def remove_bridge(host: Host, bridge: str) -> None:
    if link_exists(host, bridge):
        host.run(["ip", "link", "del", "dev", bridge])
