"""The egress policy as one nftables table of the agent's own.

Layout (``inet`` family, so one table sees every packet of the node, IPv4 and IPv6 alike):
- ``forward``: traffic leaving the bridge jumps, by source address (verdict maps ``out4`` and
  ``out6``), to the sandbox's own chain; traffic entering the bridge jumps by destination
  (``in4``, ``in6``) to a chain that lets replies in and nothing else, so sandboxes never reach
  each other; anything from the bridge that no map names (a spoofed source, IPv6 from a node
  without an IPv6 prefix) is dropped.
- ``input``: neighbour discovery (solicitations and advertisements, router solicitations, hop
  limit 255) addressed to the IPv6 gateway (its prefix and link-local addresses), their
  solicited-node groups or all-routers is accepted: without it no sandbox finds its IPv6
  gateway, nor answers the node looking for the sandbox. Everything else from sandboxes to the node
  itself jumps by source (``node4``, ``node6``); only replies to connections the node opened
  (port-forwarding), DNS to a configured resolver, and what ``allow`` names, get through, in
  every mode.
- ``postrouting``: masquerade for the sandbox subnet and the IPv6 prefix (NAT66).
- per sandbox: sets ``s<key>_allow``/``_deny`` (IPv4) and ``s<key>_allow6``/``_deny6``,
  counters ``s<key>_tx``, ``_rx``, ``_drop`` (both families), and chains ``s<key>_out``,
  ``_in``, ``_node``, which both families' maps jump to (``ip daddr`` matches IPv4 packets only,
  ``ip6 daddr`` IPv6 ones).

Every change is one ``nft -f`` transaction: it applies whole or not at all. Adding a sandbox
is idempotent (its chains and sets are flushed and refilled), so a start interrupted halfway
and retried converges; :func:`rebuild` replaces the whole table from the leases at start-up.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vmsandbox.node_agent.network import l2
from vmsandbox.node_agent.network.commands import Done, Host, Pending
from vmsandbox.node_agent.network.errors import NetworkError
from vmsandbox.node_agent.network.ipam import Lease

#: What ``restricted`` never lets a sandbox reach, unless ``allow`` names it (IPv4).
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
#: The same for IPv6: unique local (which holds the node's sandbox prefix), link-local, loopback,
#: multicast, and the unspecified address.
BLOCKED_V6 = ("fc00::/7", "fe80::/10", "::1/128", "::/128", "ff00::/8")
#: The neighbour discovery messages a sandbox may send to the node (RFC 4861): router
#: solicitation, neighbour solicitation and advertisement.
NDP = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert"


@dataclass(frozen=True)
class TableConfig:
    table: str
    bridge: str
    subnet: ipaddress.IPv4Network
    resolvers: tuple[str, ...]
    #: The IPv6 prefix and its gateway; None: sandboxes get IPv4 only.
    prefix6: ipaddress.IPv6Network | None = None
    gateway6: str | None = None
    #: The bridge's link-local address, the source of the node's own neighbour solicitations.
    gateway_link_local: str | None = None


def name_of(lease: Lease) -> str:
    """Prefix of the sandbox's objects in the table (nft names start with a letter)."""
    return f"s{lease.key}"


def _elements(cidrs: Iterable[str], version: int = 4) -> str:
    return ", ".join(c for c in cidrs if ipaddress.ip_network(c).version == version)


def _set_body(elements: str, version: int = 4) -> str:
    filling = f" elements = {{ {elements} }};" if elements else ""
    return f"type ipv{version}_addr; flags interval; auto-merge;{filling}"


def solicited_node(address: str) -> str:
    """The solicited-node multicast group of ``address`` (ff02::1:ffXX:XXXX, RFC 4291)."""
    low = int(ipaddress.IPv6Address(address)) & 0xFFFFFF
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | low))


def _declarations(cfg: TableConfig) -> list[str]:
    dns = ", ".join(r for r in cfg.resolvers if ipaddress.ip_address(r).version == 4)
    dns_set = f"type ipv4_addr; elements = {{ {dns} }};" if dns else "type ipv4_addr;"
    out = [
        f"set blocked4 {{ {_set_body(_elements([*BLOCKED_V4, str(cfg.subnet)]))} }}",
        f"set dns4 {{ {dns_set} }}",
        *(f"map {name}4 {{ type ipv4_addr : verdict; }}" for name in ("out", "in", "node")),
    ]
    if cfg.prefix6 is not None and cfg.gateway6 is not None:
        blocked = _elements([*BLOCKED_V6, str(cfg.prefix6)], 6)
        own = [cfg.gateway6, *([cfg.gateway_link_local] if cfg.gateway_link_local else [])]
        ndp = ", ".join(sorted({*own, *(solicited_node(a) for a in own), "ff02::2"}))
        out += [
            f"set blocked6 {{ {_set_body(blocked, 6)} }}",
            f"set ndp6 {{ type ipv6_addr; elements = {{ {ndp} }}; }}",
            *(f"map {name}6 {{ type ipv6_addr : verdict; }}" for name in ("out", "in", "node")),
        ]
    return out


def _chains(cfg: TableConfig) -> dict[str, list[str]]:
    """The base chains' rules, IPv6 ones only with a prefix."""
    br = json.dumps(cfg.bridge)
    v6 = cfg.prefix6 is not None and cfg.gateway6 is not None
    ndp = f"iifname {br} ip6 daddr @ndp6 ip6 hoplimit 255 icmpv6 type {{ {NDP} }} accept"
    return {
        "forward": [
            "type filter hook forward priority filter; policy accept;",
            f"oifname {br} ip daddr vmap @in4",
            *([f"oifname {br} ip6 daddr vmap @in6"] if v6 else []),
            f"oifname {br} drop",
            f"iifname {br} ip saddr vmap @out4",
            *([f"iifname {br} ip6 saddr vmap @out6"] if v6 else []),
            f"iifname {br} drop",
        ],
        "input": [
            "type filter hook input priority filter; policy accept;",
            *([ndp] if v6 else []),
            f"iifname {br} ip saddr vmap @node4",
            *([f"iifname {br} ip6 saddr vmap @node6"] if v6 else []),
            f"iifname {br} drop",
        ],
        "postrouting": [
            "type nat hook postrouting priority srcnat; policy accept;",
            f"ip saddr {cfg.subnet} oifname != {br} masquerade",
            *([f"ip6 saddr {cfg.prefix6} oifname != {br} masquerade"] if v6 else []),
        ],
    }


def _base(cfg: TableConfig) -> str:
    lines = [f"table inet {cfg.table} {{", *(f"  {d}" for d in _declarations(cfg))]
    for chain, rules in _chains(cfg).items():
        lines += [f"  chain {chain} {{", *(f"    {rule}" for rule in rules), "  }"]
    return "\n".join([*lines, "}"]) + "\n"


def _has_ipv6(cfg: TableConfig, lease: Lease) -> bool:
    return cfg.prefix6 is not None and bool(lease.ip6)


def _rules(k: str, mode: str, v6: bool) -> dict[str, list[str]]:
    """The sandbox's out, in and node chains; IPv6 rules beside the IPv4 ones when ``v6``."""
    dns = "ip daddr @dns4 meta l4proto { tcp, udp } th dport 53 accept"
    drop = f'counter name "{k}_drop" drop'
    families = [("ip", "")] + ([("ip6", "6")] if v6 else [])
    deny = [f"{fam} daddr @{k}_deny{n} {drop}" for fam, n in families]
    allow = [f"{fam} daddr @{k}_allow{n} accept" for fam, n in families]
    out = [f'counter name "{k}_tx"', dns, *deny]
    if mode == "restricted":
        out += [*allow, *(f"{fam} daddr @blocked{n or 4} {drop}" for fam, n in families)]
    out.append("accept")
    # Replies to connections the node opened (port-forwarding) come back; nothing new gets in.
    replies = "ct state established,related accept"
    return {
        "out": out,
        "in": [f'counter name "{k}_rx"', replies, drop],
        "node": [replies, dns, *deny, *allow, drop],
    }


def _sets(t: str, k: str, lease: Lease, v6: bool) -> list[str]:
    lines = []
    for version, n in [(4, "")] + ([(6, "6")] if v6 else []):
        for name, cidrs in (("allow", lease.allow), ("deny", lease.deny)):
            lines += [
                f"add set {t} {k}_{name}{n} {{ type ipv{version}_addr; flags interval; auto-merge; }}",
                f"flush set {t} {k}_{name}{n}",
            ]
            elements = _elements(cidrs, version)
            if elements:
                lines.append(f"add element {t} {k}_{name}{n} {{ {elements} }}")
    return lines


def _sandbox(cfg: TableConfig, lease: Lease) -> str:
    """Commands that (re)create one sandbox's sets, counters, chains and map entries."""
    t, k, v6 = f"inet {cfg.table}", name_of(lease), _has_ipv6(cfg, lease)
    lines = _sets(t, k, lease, v6)
    lines += [f"add counter {t} {k}_{c}" for c in ("tx", "rx", "drop")]
    for chain, rules in _rules(k, lease.mode, v6).items():
        lines += [f"add chain {t} {k}_{chain}", f"flush chain {t} {k}_{chain}"]
        lines += [f"add rule {t} {k}_{chain} {rule}" for rule in rules]
    for address, n in [(lease.ip, "4")] + ([(lease.ip6, "6")] if v6 else []):
        for chain in ("out", "in", "node"):
            lines.append(f"add element {t} {chain}{n} {{ {address} : jump {k}_{chain} }}")
    lines += l2.sandbox(cfg.table, lease, v6, k)
    return "\n".join(lines) + "\n"


def _without(cfg: TableConfig, lease: Lease) -> str:
    t, k, v6 = f"inet {cfg.table}", name_of(lease), _has_ipv6(cfg, lease)
    lines = [f"delete element {t} {chain}4 {{ {lease.ip} }}" for chain in ("out", "in", "node")]
    if v6:
        lines += [f"delete element {t} {chain}6 {{ {lease.ip6} }}" for chain in ("out", "in", "node")]
    lines += [f"flush chain {t} {k}_{c}" for c in ("out", "in", "node")]
    lines += [f"delete chain {t} {k}_{c}" for c in ("out", "in", "node")]
    lines += [f"delete set {t} {k}_{s}" for s in ("allow", "deny")]
    if v6:
        lines += [f"delete set {t} {k}_{s}6" for s in ("allow", "deny")]
    lines += [f"delete counter {t} {k}_{c}" for c in ("tx", "rx", "drop")]
    lines += l2.without(cfg.table, lease, k)
    return "\n".join(lines) + "\n"


def apply(host: Host, script: str) -> None:
    """One atomic transaction."""
    host.nft(script)


def rebuild(host: Host, cfg: TableConfig, leases: Iterable[Lease]) -> None:
    """Replace the whole table: the base chains plus every leased sandbox, in one transaction."""
    script = f"table inet {cfg.table}\ndelete table inet {cfg.table}\n" + _base(cfg) + l2.base(cfg.table)
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
    apply(host, f"table inet {table}\ndelete table inet {table}\n" + l2.delete(table))


def counters(host: Host, table: str) -> dict[str, tuple[int, int]]:
    """``{counter name: (packets, bytes)}`` of the table and its ``bridge`` twin (:mod:`l2`);
    empty when they are missing."""
    try:
        out = host.nft("list counters", step="network metrics", json_output=True)
    except NetworkError:
        return {}
    ours = {("inet", table), ("bridge", l2.name_of(table))}
    found: dict[str, tuple[int, int]] = {}
    for item in json.loads(out).get("nftables", []):
        counter = item.get("counter")
        if counter and (counter.get("family"), counter.get("table")) in ours:
            found[counter["name"]] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    return found
