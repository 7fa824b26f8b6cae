"""Run inside the node namespace: a networked sandbox served warm, the way the agent does it.

``claim_sandbox.py STATE_DIR SUBNET BRIDGE RUNTIME_ROOT BUNDLE OWNER MODE --resolver DNS
(--member ID | --snapshot NAME) [--fail-at STEP | --hold-tap]
[--baseline-member ID --baseline-bundle DIR] [--cgroup-parent PARENT]``

boots pool member ID without a NIC (or makes snapshot NAME from a VM without one), prepares the
sandbox's network, and creates the container from BUNDLE (whose config.json names the member or
the snapshot) with it: the NIC is hot-plugged at the claim. Then it starts the container, waits
for it, deletes it, frees the network and prints the container's output after ``claim <ms>``.
With ``--fail-at`` (or ``--hold-tap``, which keeps the tap busy so the hot-plug fails), the
create fails instead; it prints ``create failed: ...`` and what the runtime still holds. A
baseline member is claimed first without a network, for the claim's time without a NIC
(``baseline <ms>``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.hypervisor.taps import open_tap
from vmsandbox.node_agent.network import NetworkSettings, NodeNetwork
from vmsandbox.node_agent.network.startup import tap_owner
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.faults import FAIL_AT_ENV
from vmsandbox.runtime.vmsize import VMSize


def _run(runtime: Runtime, owner: str, bundle: Path, network: NetworkAttachment | None) -> tuple[float, str]:
    """Create, start, wait and delete; the claim's milliseconds and the container's output."""
    log = runtime.root / f"{owner}.log"
    state = runtime.create(owner, bundle, log_path=log, network=network)
    try:
        runtime.start(owner)
        runtime.wait(owner, timeout=300)
    finally:
        runtime.delete(owner, force=True)
    return (state.timings.claim or state.timings.restore or 0.0), log.read_text()


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("state_dir", "subnet", "bridge", "root", "bundle", "owner", "mode"):
        parser.add_argument(name)
    parser.add_argument("--resolver", action="append", default=[])
    parser.add_argument("--member")
    parser.add_argument("--snapshot")
    parser.add_argument("--fail-at")
    parser.add_argument("--hold-tap", action="store_true", help="hold the tap open: the hot-plug fails")
    parser.add_argument("--baseline-member")
    parser.add_argument("--baseline-bundle", type=Path)
    parser.add_argument("--cgroup-parent", default="")
    args = parser.parse_args()
    node = NodeNetwork(
        NetworkSettings(
            subnet=ipaddress.IPv4Network(args.subnet),
            state_dir=Path(args.state_dir),
            bridge=args.bridge,
            resolvers=tuple(args.resolver),
            tap_owner=tap_owner(os.environ.get("VMSANDBOX_VMM_USER", "")),
        )
    )
    node.reconcile([])
    config = HypervisorConfig.load().model_copy(update={"cgroup_parent": args.cgroup_parent})
    runtime = Runtime(root=Path(args.root), hypervisor="qemu", config=config)
    if args.baseline_member:
        runtime.boot_member(args.baseline_member, 1, 256)
        took, _ = _run(runtime, f"{args.owner}-none", args.baseline_bundle, None)
        print(f"baseline {took:.0f}")
    if args.member:
        runtime.boot_member(args.member, 1, 256)
    else:
        runtime.make_snapshot(args.snapshot, VMSize(vcpus=1, memory_mib=256))
    attachment = node.attach(args.owner, args.mode, [], [], "tap")
    try:
        if args.fail_at or args.hold_tap:
            if args.fail_at:
                os.environ[FAIL_AT_ENV] = args.fail_at
            held = open_tap(attachment) if args.hold_tap else None
            try:
                runtime.create(args.owner, Path(args.bundle), network=attachment)
            except Exception as exc:
                print(f"create failed: {exc}")
            finally:
                if held is not None:
                    os.close(held)
            print("records:", " ".join(sorted(s.id for s in runtime.list())) or "none")
            print("vm dirs:", " ".join(sorted(p.name for p in runtime.store.vm_dirs())) or "none")
            return
        took, out = _run(runtime, args.owner, Path(args.bundle), attachment)
        print(f"claim {took:.0f}")
        print(out, end="")
    finally:
        node.detach(args.owner)


if __name__ == "__main__":
    main()
