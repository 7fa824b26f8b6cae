"""A snapshot pool's member on this node: one snapshot of a bare VM, restored by every claim.

It lives under the runtime's snapshot root (the only place a restore may read from), named by
the member's id; a directory without the driver's manifest is an incomplete snapshot.
"""

from __future__ import annotations

import contextlib
import shutil

from vmsandbox.hypervisor.base import SNAPSHOT_MANIFEST
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.snapshots import snapshot_dir, snapshot_root
from vmsandbox.runtime.vmsize import VMSize


def make(runtime: Runtime, name: str, vcpus: int, memory_mib: int) -> None:
    """Boot a bare VM of this size, snapshot it and stop it; nothing remains on failure."""
    runtime.make_snapshot(name, VMSize(vcpus=vcpus, memory_mib=memory_mib))


def complete(runtime: Runtime, name: str) -> bool:
    return (snapshot_dir(runtime.root, name, step="pool snapshot") / SNAPSHOT_MANIFEST).is_file()


def remove(runtime: Runtime, name: str) -> None:
    """Delete the snapshot, and the snapshot root with its last one."""
    shutil.rmtree(snapshot_dir(runtime.root, name, step="pool snapshot"), ignore_errors=True)
    with contextlib.suppress(OSError):
        snapshot_root(runtime.root).rmdir()
