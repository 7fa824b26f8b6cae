"""Turning a :mod:`protocol` rootfs source into a directory the OCI runtime can use.

In a real VM a :class:`BlockDevice` is the virtio-blk disk whose ``/sys/block/vd*/serial``
matches; it is mounted as ext4. When the agent runs as a host process standing in for a guest
(the Cloud Hypervisor stand-in), ``VMSANDBOX_GUEST_DISKS`` names a JSON file mapping serial to
image path, re-read on every lookup because the stand-in rewrites it on hot-plug; the image is
then unpacked with ``debugfs rdump`` instead of being mounted, so no loop device is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.protocol import BlockDevice, HostPath

DISKS_ENV = "VMSANDBOX_GUEST_DISKS"
SYS_BLOCK = Path("/sys/block")


class RootfsError(VMSandboxError):
    step = "container rootfs"


def _emulated_image(serial: str, table: Path) -> Path | None:
    try:
        mapping = json.loads(table.read_text())
    except (OSError, ValueError) as exc:
        raise RootfsError(f"cannot read {DISKS_ENV}={table}: {exc}") from exc
    image = mapping.get(serial) if isinstance(mapping, dict) else None
    return Path(image) if isinstance(image, str) else None


def _find_block_device(serial: str) -> Path | None:
    for entry in sorted(SYS_BLOCK.glob("vd*")):
        try:
            if (entry / "serial").read_text().strip() == serial:
                return Path("/dev") / entry.name
        except OSError:
            continue
    return None


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RootfsError(f"{what}: {(proc.stderr or proc.stdout).strip() or proc.returncode}")


class PreparedRootfs:
    """A rootfs directory plus how to release it when the container is destroyed."""

    def __init__(self, path: Path, mounted: bool = False, owned_dir: Path | None = None) -> None:
        self.path = path
        self.mounted = mounted
        self.owned_dir = owned_dir

    def release(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
            self.mounted = False


def prepare_rootfs(source: HostPath | BlockDevice, workdir: Path, wait: float = 10.0) -> PreparedRootfs:
    """Make ``source`` available as a directory; ``workdir`` belongs to the container."""
    if isinstance(source, HostPath):
        path = Path(source.path)
        if not path.is_dir():
            raise RootfsError(f"host path {path} is not a directory")
        return PreparedRootfs(path)
    target = workdir / "rootfs"
    target.mkdir(parents=True, exist_ok=True)
    table = os.environ.get(DISKS_ENV)
    deadline = time.monotonic() + wait
    while True:
        if table:
            image = _emulated_image(source.serial, Path(table))
            if image is not None:
                _run(["debugfs", "-R", f"rdump / {target}", str(image)], f"unpack disk {source.serial}")
                return PreparedRootfs(target, owned_dir=target)
        else:
            device = _find_block_device(source.serial)
            if device is not None:
                _run(["mount", "-t", "ext4", str(device), str(target)], f"mount {device}")
                return PreparedRootfs(target, mounted=True)
        if time.monotonic() >= deadline:
            where = f"{DISKS_ENV}={table}" if table else f"{SYS_BLOCK}/vd*/serial"
            raise RootfsError(f"no disk with serial {source.serial!r} in {where}")
        time.sleep(0.05)
