"""Open a sandbox's tap on the host side, for a NIC hot-plugged into a running VM.

The node prepared the tap (possibly in another network namespace, ``tap_netns``) and the VMM
runs as an unprivileged user in its own namespace, so neither opens it by name: the caller, as
root, opens it in the tap's namespace and hands the descriptor to the VMM (QEMU's ``getfd``,
Cloud Hypervisor's ``vm.add-net`` with SCM_RIGHTS). Python 3.11 has no ``setns``, so the opening
happens in a short-lived helper, ``qemu/tapfd.py --send``, started under ``nsenter`` when needed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.network import NetworkAttachment

TAPFD_SCRIPT = Path(__file__).with_name("qemu") / "tapfd.py"
OPEN_TIMEOUT = 30.0


def open_tap(network: NetworkAttachment) -> int:
    """A descriptor of ``network.tap`` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as at cold boot);
    the caller closes it."""
    if network.tap is None:
        raise HypervisorError("the network attachment has no tap", step="attach nic")
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent:
        with child:
            argv = [sys.executable, "-I", str(TAPFD_SCRIPT), "--send", network.tap, str(child.fileno())]
            if network.tap_netns is not None:
                argv = ["nsenter", f"--net={network.tap_netns}", *argv]
            try:
                done = subprocess.run(
                    argv, pass_fds=(child.fileno(),), capture_output=True, text=True, timeout=OPEN_TIMEOUT
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise HypervisorError(f"opening tap {network.tap}: {exc}", step="attach nic") from exc
        if done.returncode != 0:
            detail = done.stderr.strip() or f"exit status {done.returncode}"
            raise HypervisorError(f"opening tap {network.tap}: {detail}", step="attach nic")
        parent.settimeout(OPEN_TIMEOUT)
        _, fds, _, _ = socket.recv_fds(parent, 16, 1)
    if len(fds) != 1:
        raise HypervisorError(f"opening tap {network.tap}: no descriptor came back", step="attach nic")
    return fds[0]
