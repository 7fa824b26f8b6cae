"""The process backend's root filesystem: the image's unpacked tree read-only under an overlay.

Every sandbox of an image shares the one unpacked tree in the image cache as the overlay's
lower layer; what the container writes lands in ``upper/`` in its own bundle directory, so no
sandbox copies the image and none can write into the tree its siblings read.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from pathlib import Path

from vmsandbox.node_agent.errors import BundleFailed

log = logging.getLogger("vmsandbox.node_agent.overlay")
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _checked(path: Path) -> str:
    """An absolute path the overlay's option string cannot misread (no ``,`` ``:`` or newline)."""
    text = str(path.absolute())
    if any(c in text for c in ",:\n\\"):
        raise BundleFailed(f"{text!r} cannot be an overlay layer", step="bundle rootfs")
    return text


def mount_overlay(lower: Path, bundle: Path) -> Path:
    """Mount ``bundle/rootfs``: ``lower`` read-only beneath ``bundle/upper``."""
    rootfs, upper, work = bundle / "rootfs", bundle / "upper", bundle / "work"
    for directory in (rootfs, upper, work):
        directory.mkdir(mode=0o755)
    options = f"lowerdir={_checked(lower)},upperdir={_checked(upper)},workdir={_checked(work)}"
    rc = _libc.mount(b"vmsb-rootfs", str(rootfs).encode(), b"overlay", 0, options.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise BundleFailed(f"mounting the overlay at {rootfs}: {os.strerror(err)}", step="bundle rootfs")
    return rootfs


def unmount(path: Path) -> None:
    """Detach a mount at ``path`` if there is one (idempotent)."""
    if os.path.ismount(path) and _libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise BundleFailed(f"unmounting {path}: {os.strerror(err)}", step="bundle rootfs")


def remove_bundle(bundle: Path) -> None:
    """Unmount the bundle's overlay, then delete the bundle (its upper layer with it).

    Removing files through a still-mounted overlay would only hide them, never touch the shared
    tree; the unmount comes first so no mount outlives its sandbox.
    """
    try:
        unmount(bundle / "rootfs")
    except BundleFailed as exc:  # the rmtree below can then only hide files in the upper layer
        log.warning("%s", exc)
    shutil.rmtree(bundle, ignore_errors=True)
