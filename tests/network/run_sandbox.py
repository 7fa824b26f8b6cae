"""Run inside the node namespace: one sandbox with its network, the way the agent does it.

``run_sandbox.py STATE_DIR SUBNET BRIDGE RUNTIME_ROOT BUNDLE OWNER MODE [--allow CIDR]...
[--subnet6 PREFIX] [--hypervisor process|qemu]`` (the process backend gets a namespace, a VM a
tap; IPv4 only unless ``--subnet6`` names the IPv6 prefix)
prepares the network, creates and starts the container with it, waits for it to exit, deletes
it, frees the network, and prints the container's output.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
from pathlib import Path

from vmsandbox.node_agent.network import NetworkSettings, NodeNetwork
from vmsandbox.node_agent.network.startup import tap_owner
from vmsandbox.runtime import Runtime


def _ids(pid: int) -> str:
    """``uid:gid`` of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return f"{fields['Uid'].split()[0]}:{fields['Gid'].split()[0]}"


def _tap_owner(tap: str) -> str:
    """The tap's owning uid, as ``ip -details`` shows it in this namespace (sysfs may not)."""
    words = subprocess.run(
        ["ip", "-details", "link", "show", "dev", tap], capture_output=True, text=True
    ).stdout
    parts = words.split()
    return parts[parts.index("user") + 1] if "user" in parts else "root"


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("state_dir", "subnet", "bridge", "root", "bundle", "owner", "mode"):
        parser.add_argument(name)
    parser.add_argument("--allow", action="append", default=[])
    parser.add_argument("--resolver", action="append", default=[])
    parser.add_argument("--subnet6", type=ipaddress.IPv6Network)
    parser.add_argument("--hypervisor", default="process", choices=["process", "qemu"])
    args = parser.parse_args()
    node = NodeNetwork(
        NetworkSettings(
            subnet=ipaddress.IPv4Network(args.subnet),
            prefix6=args.subnet6,
            state_dir=Path(args.state_dir),
            bridge=args.bridge,
            resolvers=tuple(args.resolver),
            tap_owner=tap_owner(os.environ.get("VMSANDBOX_VMM_USER", "")),
        )
    )
    node.reconcile([])
    runtime = Runtime(root=Path(args.root), hypervisor=args.hypervisor)
    kind = "netns" if args.hypervisor == "process" else "tap"
    log = Path(args.root) / "out.log"
    attachment = node.attach(args.owner, args.mode, args.allow, [], kind)
    try:
        state = runtime.create(args.owner, Path(args.bundle), log_path=log, network=attachment)
        if state.vm is not None and attachment is not None and attachment.tap is not None:
            print(f"vmm {_ids(state.vm.vmm_pid)} tap owner {_tap_owner(attachment.tap)}")
        runtime.start(args.owner)
        runtime.wait(args.owner, timeout=300)
        runtime.delete(args.owner, force=True)
    finally:
        node.detach(args.owner)
    print(log.read_text(), end="")


if __name__ == "__main__":
    main()
