"""The container's root filesystem as an ext4 image, for drivers whose guests cannot see the host."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from vmsandbox.runtime.errors import RuntimeError_

#: Free space and metadata on top of the files themselves.
SLACK_BYTES = 32 * 1024 * 1024


def disk_serial(container_id: str) -> str:
    """A virtio-blk serial (at most 20 characters) unique to the container."""
    return "vmsb-" + hashlib.sha256(container_id.encode()).hexdigest()[:15]


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096 * (len(dirnames) + 1)
        for name in filenames:
            try:
                total += max(os.lstat(os.path.join(dirpath, name)).st_size, 4096)
            except OSError:
                continue
    return total


def make_disk(rootfs: Path, image: Path) -> Path:
    """``mkfs.ext4 -d`` the rootfs into ``image``, sized from the tree plus slack."""
    size_kib = (int(_tree_bytes(rootfs) * 1.2) + SLACK_BYTES) // 1024
    proc = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "vmsb-rootfs", "-d", str(rootfs), str(image), f"{size_kib}k"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        image.unlink(missing_ok=True)
        raise RuntimeError_(f"mkfs.ext4 -d {rootfs}: {proc.stderr.strip()}", step="container disk")
    return image
