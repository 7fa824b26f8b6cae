"""QEMU snapshots as migration to and from a file, over QMP.

QEMU runs under ``-sandbox spawn=deny``, so ``exec:cat > FILE`` (which forks a shell) is out,
and ``file:`` URIs only exist from QEMU 8.2. Instead this process opens the file and hands its
descriptor to QEMU with ``getfd`` (SCM_RIGHTS), then migrates to ``fd:<name>``: it works on every
QEMU this project supports and keeps QEMU from opening paths itself. Where QEMU has the
``mapped-ram`` capability (9.0+), it is switched on at both ends, so guest pages land at fixed
offsets in the file instead of a stream.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.qemu.qmp import QMPClient

MEMORY_FILE = "memory.bin"
FD_NAME = "vmsb-snapshot"
MAPPED_RAM = "mapped-ram"
POLL = 0.02


def has_capability(qmp: QMPClient, name: str) -> bool:
    caps = qmp.execute("query-migrate-capabilities")
    return any(cap.get("capability") == name for cap in caps)


def enable_mapped_ram(qmp: QMPClient) -> bool:
    """Switch mapped-ram on where this QEMU has it; whether it did."""
    if not has_capability(qmp, MAPPED_RAM):
        return False
    qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": MAPPED_RAM, "state": True}]})
    return True


def save(qmp: QMPClient, target: Path, timeout: float) -> None:
    """Migrate the (stopped) VM's state into ``target`` and wait until it is complete."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        qmp.execute("getfd", {"fdname": FD_NAME}, fd=fd)
    finally:
        os.close(fd)
    qmp.execute("migrate", {"uri": f"fd:{FD_NAME}"})
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise HypervisorError(
                f"migration to {target} {status}: {info.get('error-desc', '')}", step="snapshot"
            )
        if time.monotonic() >= deadline:
            qmp.execute("migrate_cancel")
            raise HypervisorError(f"migration to {target} not done within {timeout:g}s", step="snapshot")
        time.sleep(POLL)


def load(qmp: QMPClient, source: Path) -> None:
    """Start the incoming migration (QEMU started with ``-incoming defer``) from ``source``."""
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        qmp.execute("getfd", {"fdname": FD_NAME}, fd=fd)
    finally:
        os.close(fd)
    qmp.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})


def wait_loaded(qmp: QMPClient, timeout: float) -> None:
    """Wait until the incoming migration is done and the VM runs again."""
    deadline = time.monotonic() + timeout
    while True:
        status = qmp.execute("query-status").get("status")
        if status == "running":
            return
        if status not in ("inmigrate", "prelaunch"):
            if status in ("paused", "postmigrate", "finish-migrate"):
                qmp.execute("cont")
                continue
            raise HypervisorError(f"the restored VM is {status!r}, not running", step="restore")
        if time.monotonic() >= deadline:
            raise HypervisorError(f"the snapshot did not load within {timeout:g}s", step="restore")
        time.sleep(POLL)
