"""The node's sandbox bridge and each sandbox's link to it, made with ``ip``.

Every bridge port is *isolated*: frames between two sandboxes' ports are never forwarded, so
sandboxes reach each other (and everything else) only through the node's routing, where the
nftables policy sees them. No link gets an IPv6 address (``addrgenmode none``).

Names: host veth ``vsb<key>``, tap ``tsb<key>`` (15 bytes, the kernel's limit), namespace
``<bridge>-<key>``; reconciliation recognises its own links and namespaces by these.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vmsandbox.node_agent.network.commands import run, succeeds

NETNS_DIR = Path("/run/netns")
_OWN_LINK = re.compile(r"^[vt]sb[0-9a-f]{12}$")


def veth_name(key: str) -> str:
    return f"vsb{key}"


def tap_name(key: str) -> str:
    return f"tsb{key}"


def netns_name(bridge: str, key: str) -> str:
    return f"{bridge}-{key}"


def _ip_batch(lines: list[str], netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    run(argv, stdin="\n".join(lines) + "\n")


def link_exists(name: str) -> bool:
    return succeeds(["ip", "link", "show", "dev", name])


def ensure_bridge(bridge: str, gateway: str, prefix_length: int) -> None:
    """The bridge with the gateway address, up, and forwarding on (idempotent)."""
    lines = []
    if not link_exists(bridge):
        lines.append(f"link add name {bridge} type bridge")
        lines.append(f"link set dev {bridge} addrgenmode none")
    lines += [f"address replace {gateway}/{prefix_length} dev {bridge}", f"link set dev {bridge} up"]
    _ip_batch(lines)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def _port(name: str, bridge: str) -> list[str]:
    return [
        f"link set dev {name} addrgenmode none",
        f"link set dev {name} master {bridge}",
        f"link set dev {name} type bridge_slave isolated on",
        f"link set dev {name} up",
    ]


def add_tap(bridge: str, key: str) -> str:
    """A persistent tap on the bridge for a VM's NIC; the VMM opens it by name."""
    tap = tap_name(key)
    lines = [] if link_exists(tap) else [f"tuntap add dev {tap} mode tap"]
    _ip_batch(lines + _port(tap, bridge))
    return tap


def reattach(bridge: str, key: str) -> None:
    """Put the sandbox's existing host-side link back on a bridge that was re-created."""
    for name in (veth_name(key), tap_name(key)):
        if link_exists(name):
            _ip_batch(_port(name, bridge))


def add_netns(bridge: str, key: str) -> Path:
    """A namespace of the sandbox's own holding only loopback (mode ``none``)."""
    ns = netns_name(bridge, key)
    if not (NETNS_DIR / ns).exists():
        run(["ip", "netns", "add", ns])
    _ip_batch(["link set dev lo up"], ns)
    return NETNS_DIR / ns


def add_veth(bridge: str, key: str, ip: str, prefix_length: int, gateway: str, mac: str) -> Path:
    """A namespace whose ``eth0`` is a veth to the bridge, addressed and routed via the gateway."""
    ns = netns_name(bridge, key)
    host = veth_name(key)
    lines = [] if (NETNS_DIR / ns).exists() else [f"netns add {ns}"]
    if link_exists(host):
        lines.append(f"link del dev {host}")
    lines.append(f"link add {host} type veth peer name eth0 netns {ns}")
    _ip_batch(lines + _port(host, bridge))
    _ip_batch(
        [
            "link set dev lo up",
            f"link set dev eth0 address {mac} addrgenmode none",
            f"address add {ip}/{prefix_length} dev eth0",
            "link set dev eth0 up",
            f"route add default via {gateway} dev eth0",
        ],
        ns,
    )
    return NETNS_DIR / ns


def remove(bridge: str, key: str) -> None:
    """Whatever links and namespace the sandbox has; missing ones are fine."""
    ns = netns_name(bridge, key)
    if (NETNS_DIR / ns).exists():
        run(["ip", "netns", "del", ns])
    for name in (veth_name(key), tap_name(key)):
        # Deleting the namespace takes the veth with it, asynchronously: gone by now is fine.
        if not succeeds(["ip", "link", "del", "dev", name]) and link_exists(name):
            run(["ip", "link", "del", "dev", name])


def own_links() -> list[str]:
    """Names of the links on this node that look like ours (``vsb…``/``tsb…``)."""
    out = json.loads(run(["ip", "-j", "link", "show"]) or "[]")
    return [link["ifname"] for link in out if _OWN_LINK.match(link.get("ifname", ""))]


def own_netns(bridge: str) -> list[str]:
    """Names of the namespaces this bridge's sandboxes would have."""
    if not NETNS_DIR.is_dir():
        return []
    prefix = f"{bridge}-"
    return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)]


def remove_bridge(bridge: str) -> None:
    if link_exists(bridge):
        run(["ip", "link", "del", "dev", bridge])
