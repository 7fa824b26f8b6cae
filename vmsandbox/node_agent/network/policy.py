"""The egress policy as one nftables table of the agent's own.

Layout (``inet`` family, so one table sees every packet of the node):
- ``forward``: traffic leaving the bridge jumps, by source address (verdict map ``out4``), to
  the sandbox's own chain; traffic entering the bridge jumps by destination (``in4``) to a
  chain that lets replies in and nothing else, so sandboxes never reach each other; anything
  from the bridge that no map names (a spoofed source, every IPv6 packet) is dropped.
- ``input``: traffic from sandboxes to the node itself jumps by source (``node4``); only replies
  to connections the node opened (port-forwarding), DNS to a configured resolver, and what
  ``allow`` names, get through, in every mode.
- ``postrouting``: masquerade for the sandbox subnet.
- per sandbox: sets ``s<key>_allow`` and ``s<key>_deny``, counters ``s<key>_tx``, ``_rx``,
  ``_drop``, and chains ``s<key>_out``, ``_in``, ``_node``.

Every change is one ``nft -f`` transaction: it applies whole or not at all. Adding a sandbox
is idempotent (its chains and sets are flushed and refilled), so a start interrupted halfway
and retried converges; :func:`rebuild` replaces the whole table from the leases at start-up.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vmsandbox.node_agent.network.commands import Done, Host, Pending
from vmsandbox.node_agent.network.errors import NetworkError
from vmsandbox.node_agent.network.ipam import Lease

#: What ``restricted`` never lets a sandbox reach, unless ``allow`` names it (IPv4; sandboxes get
#: no IPv6 address, and the table drops every IPv6 packet from the bridge).
BLOCKED_V4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # shared address space (CGNAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata services
    "172.16.0.0/12",  # RFC 1918
    "192.168.0.0/16",  # RFC 1918
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, limited broadcast
)
#: The same for IPv6, applied once sandboxes get IPv6 addresses: ULA, link-local, loopback, multicast.
BLOCKED_V6 = ("fc00::/7", "fe80::/10", "::1/128", "ff00::/8")


@dataclass(frozen=True)
class TableConfig:
    table: str
    bridge: str
    subnet: ipaddress.IPv4Network
    resolvers: tuple[str, ...]


def name_of(lease: Lease) -> str:
    """Prefix of the sandbox's objects in the table (nft names start with a letter)."""
    return f"s{lease.key}"


def _elements(cidrs: Iterable[str]) -> str:
    v4 = [c for c in cidrs if ipaddress.ip_network(c).version == 4]
    return ", ".join(v4)


def _set_body(elements: str) -> str:
    filling = f" elements = {{ {elements} }};" if elements else ""
    return f"type ipv4_addr; flags interval; auto-merge;{filling}"


def _base(cfg: TableConfig) -> str:
    br = json.dumps(cfg.bridge)
    dns = ", ".join(r for r in cfg.resolvers if ipaddress.ip_address(r).version == 4)
    dns_set = f"type ipv4_addr; elements = {{ {dns} }};" if dns else "type ipv4_addr;"
    blocked = _elements([*BLOCKED_V4, str(cfg.subnet)])
    return f"""table inet {cfg.table} {{
  set blocked4 {{ {_set_body(blocked)} }}
  set dns4 {{ {dns_set} }}
  map out4 {{ type ipv4_addr : verdict; }}
  map in4 {{ type ipv4_addr : verdict; }}
  map node4 {{ type ipv4_addr : verdict; }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    oifname {br} ip daddr vmap @in4
    oifname {br} drop
    iifname {br} ip saddr vmap @out4
    iifname {br} drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname {br} ip saddr vmap @node4
    iifname {br} drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {cfg.subnet} oifname != {br} masquerade
  }}
}}
"""


def _sandbox(cfg: TableConfig, lease: Lease) -> str:
    """Commands that (re)create one sandbox's sets, counters, chains and map entries."""
    t, k = f"inet {cfg.table}", name_of(lease)
    dns = "ip daddr @dns4 meta l4proto { tcp, udp } th dport 53 accept"
    drop = f'counter name "{k}_drop" drop'
    out = [f'counter name "{k}_tx"', dns, f"ip daddr @{k}_deny {drop}"]
    if lease.mode == "restricted":
        out += [f"ip daddr @{k}_allow accept", f"ip daddr @blocked4 {drop}"]
    out.append("accept")
    # Replies to connections the node opened (port-forwarding) come back; nothing new gets in.
    replies = "ct state established,related accept"
    node = [replies, dns, f"ip daddr @{k}_deny {drop}", f"ip daddr @{k}_allow accept", drop]
    inbound = [f'counter name "{k}_rx"', replies, drop]
    lines = [
        f"add set {t} {k}_allow {{ type ipv4_addr; flags interval; auto-merge; }}",
        f"add set {t} {k}_deny {{ type ipv4_addr; flags interval; auto-merge; }}",
        f"flush set {t} {k}_allow",
        f"flush set {t} {k}_deny",
    ]
    for name, cidrs in (("allow", lease.allow), ("deny", lease.deny)):
        elements = _elements(cidrs)
        if elements:
            lines.append(f"add element {t} {k}_{name} {{ {elements} }}")
    lines += [f"add counter {t} {k}_{c}" for c in ("tx", "rx", "drop")]
    for chain, rules in (("out", out), ("in", inbound), ("node", node)):
        lines += [f"add chain {t} {k}_{chain}", f"flush chain {t} {k}_{chain}"]
        lines += [f"add rule {t} {k}_{chain} {rule}" for rule in rules]
    for vmap, chain in (("out4", "out"), ("in4", "in"), ("node4", "node")):
        lines.append(f"add element {t} {vmap} {{ {lease.ip} : jump {k}_{chain} }}")
    return "\n".join(lines) + "\n"


def _without(cfg: TableConfig, lease: Lease) -> str:
    t, k = f"inet {cfg.table}", name_of(lease)
    lines = [f"delete element {t} {vmap} {{ {lease.ip} }}" for vmap in ("out4", "in4", "node4")]
    lines += [f"flush chain {t} {k}_{c}" for c in ("out", "in", "node")]
    lines += [f"delete chain {t} {k}_{c}" for c in ("out", "in", "node")]
    lines += [f"delete set {t} {k}_{s}" for s in ("allow", "deny")]
    lines += [f"delete counter {t} {k}_{c}" for c in ("tx", "rx", "drop")]
    return "\n".join(lines) + "\n"


def apply(host: Host, script: str) -> None:
    """One atomic transaction."""
    host.nft(script)


def rebuild(host: Host, cfg: TableConfig, leases: Iterable[Lease]) -> None:
    """Replace the whole table: the base chains plus every leased sandbox, in one transaction."""
    script = f"table inet {cfg.table}\ndelete table inet {cfg.table}\n" + _base(cfg)
    script += "".join(_sandbox(cfg, lease) for lease in leases)
    apply(host, script)


def add(host: Host, cfg: TableConfig, lease: Lease) -> Pending | Done:
    """Started, perhaps not finished: the caller sets up the links meanwhile and then waits for it."""
    return host.nft_start(_sandbox(cfg, lease))


def remove(
    host: Host, cfg: TableConfig, lease: Lease, others: Iterable[Lease], meanwhile: Callable[[], None]
) -> None:
    """Drop one sandbox, running ``meanwhile`` while nft works; when the sandbox's objects are not
    all there, rebuild the table from the others instead."""
    pending = host.nft_start(_without(cfg, lease))
    try:
        meanwhile()
    finally:
        try:
            pending.wait()
        except NetworkError:
            rebuild(host, cfg, others)


def delete_table(host: Host, table: str) -> None:
    apply(host, f"table inet {table}\ndelete table inet {table}\n")


def counters(host: Host, table: str) -> dict[str, tuple[int, int]]:
    """``{counter name: (packets, bytes)}`` of the table; empty when the table is missing."""
    try:
        out = host.nft(f"list counters table inet {table}", step="network metrics", json_output=True)
    except NetworkError:
        return {}
    found: dict[str, tuple[int, int]] = {}
    for item in json.loads(out).get("nftables", []):
        counter = item.get("counter")
        if counter:
            found[counter["name"]] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    return found
