"""Run inside the node namespace: one sandbox with its network, the way the agent does it.

``run_sandbox.py STATE_DIR SUBNET BRIDGE RUNTIME_ROOT BUNDLE OWNER MODE [--allow CIDR]...
[--hypervisor process|qemu]`` (the process backend gets a namespace, a VM a tap)
prepares the network, creates and starts the container with it, waits for it to exit, deletes
it, frees the network, and prints the container's output.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from vmsandbox.node_agent.network import NetworkSettings, NodeNetwork
from vmsandbox.runtime import Runtime


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("state_dir", "subnet", "bridge", "root", "bundle", "owner", "mode"):
        parser.add_argument(name)
    parser.add_argument("--allow", action="append", default=[])
    parser.add_argument("--resolver", action="append", default=[])
    parser.add_argument("--hypervisor", default="process", choices=["process", "qemu"])
    args = parser.parse_args()
    node = NodeNetwork(
        NetworkSettings(
            subnet=ipaddress.IPv4Network(args.subnet),
            state_dir=Path(args.state_dir),
            bridge=args.bridge,
            resolvers=tuple(args.resolver),
        )
    )
    node.reconcile([])
    runtime = Runtime(root=Path(args.root), hypervisor=args.hypervisor)
    kind = "netns" if args.hypervisor == "process" else "tap"
    log = Path(args.root) / "out.log"
    attachment = node.attach(args.owner, args.mode, args.allow, [], kind)
    try:
        runtime.create(args.owner, Path(args.bundle), log_path=log, network=attachment)
        runtime.start(args.owner)
        runtime.wait(args.owner, timeout=300)
        runtime.delete(args.owner, force=True)
    finally:
        node.detach(args.owner)
    print(log.read_text(), end="")


if __name__ == "__main__":
    main()
