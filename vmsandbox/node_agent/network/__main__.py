"""``python -m vmsandbox.node_agent.network``: the node's sandbox network by hand (debugging, tests).

Each command prints JSON. It drives the same :class:`NodeNetwork` the agent uses, so running it
in a fresh process is also what an agent restart looks like to the leases and the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from pathlib import Path

from vmsandbox.node_agent.network.errors import NetworkError
from vmsandbox.node_agent.network.node import NetworkSettings, NodeNetwork
from vmsandbox.node_agent.network.startup import derived_prefix6


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.node_agent.network", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--subnet", type=ipaddress.IPv4Network, required=True)
    parser.add_argument(
        "--subnet6", help="the IPv6 prefix; none: IPv4 only; default: derived from --subnet, as by the agent"
    )
    parser.add_argument("--bridge", default="vmsb0")
    parser.add_argument("--table", default="vmsandbox")
    parser.add_argument("--resolver", action="append", default=[])
    sub = parser.add_subparsers(dest="command", required=True)
    attach = sub.add_parser("attach", help="lease, link and policy for one sandbox")
    attach.add_argument("owner")
    attach.add_argument("--mode", choices=["none", "restricted", "open"], default="restricted")
    attach.add_argument("--allow", action="append", default=[])
    attach.add_argument("--deny", action="append", default=[])
    attach.add_argument("--kind", choices=["netns", "tap"], default="netns")
    detach = sub.add_parser("detach", help="free one sandbox's network")
    detach.add_argument("owner")
    reconcile = sub.add_parser("reconcile", help="keep only these owners' networks")
    reconcile.add_argument("keep", nargs="*")
    sub.add_parser("counters", help="per-sandbox traffic and drops")
    sub.add_parser("leases", help="the leases on disk")
    sub.add_parser("shutdown", help="remove the table and the bridge")
    return parser


def _prefix6(subnet: ipaddress.IPv4Network, value: str | None) -> ipaddress.IPv6Network | None:
    if value == "none":
        return None
    return ipaddress.IPv6Network(value) if value else derived_prefix6(subnet)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = NetworkSettings(
        subnet=args.subnet,
        prefix6=_prefix6(args.subnet, args.subnet6),
        state_dir=args.state_dir,
        bridge=args.bridge,
        table=args.table,
        resolvers=tuple(args.resolver),
    )
    node = NodeNetwork(settings)
    result: object = None
    try:
        if args.command == "attach":
            result = node.attach(args.owner, args.mode, args.allow, args.deny, args.kind).model_dump(
                mode="json"
            )
        elif args.command == "detach":
            node.detach(args.owner)
        elif args.command == "reconcile":
            node.reconcile(args.keep)
        elif args.command == "counters":
            result = {owner: dataclasses.asdict(c) for owner, c in node.counters().items()}
        elif args.command == "leases":
            result = [lease.model_dump() for lease in node.ipam.leases()]
        elif args.command == "shutdown":
            node.shutdown()
    except NetworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
