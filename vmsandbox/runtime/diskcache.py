"""One read-only ext4 disk per image, shared by every VM whose container runs that image.

A container's root disk used to be ``mkfs.ext4 -d`` of its bundle per create. The disk only
depends on the image, so it is made once per key and attached read-only to every VM; the guest
puts the container's writable layer on top as an overlay (:mod:`vmsandbox.guest.disks`).

The key can never name a disk made from other files: either the image's manifest digest (given
by the caller that unpacked the image, never read from the bundle a tenant may influence) or a
fingerprint of the tree's metadata, in which every change to a file changes its ctime. The key
also names :data:`DISK_FORMAT`, so a change to how disks are made never reuses an old one.
Disks are written to a temporary name and renamed into place; concurrent makers of one key
single-flight on a file lock. Eviction skips every disk a container record still names.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vmsandbox.hypervisor.filecmd import run_writing
from vmsandbox.runtime.errors import RuntimeError_

#: Bumped whenever the disk's layout or mkfs options change: old disks are then never used.
DISK_FORMAT = 2
#: Free space and metadata on top of the files themselves.
SLACK_BYTES = 32 * 1024 * 1024
#: Disks kept beyond those in use before the least recently used are removed.
DEFAULT_KEEP = 16
#: A disk handed out this recently is kept even if no record names it yet (a create in flight).
RECENT_S = 600.0
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^(image|tree)-[0-9a-f]{64}\.v\d+\.ext4$")


def disk_serial(container_id: str) -> str:
    """A virtio-blk serial (at most 20 characters) unique to the container."""
    return "vmsb-" + hashlib.sha256(container_id.encode()).hexdigest()[:15]


def tree_fingerprint(root: Path) -> str:
    """A digest of every entry's path and metadata (inode, ctime, size, mode, owner, link).

    Writing to, replacing, chmod-ing or renaming anything in the tree changes an inode's ctime,
    which no caller can set back, so a changed tree never matches an old fingerprint.
    """
    real = os.path.realpath(root)
    h = hashlib.sha256(real.encode())
    for dirpath, dirnames, filenames in os.walk(real):
        dirnames.sort()
        for name in ["", *sorted(filenames), *dirnames]:
            path = os.path.join(dirpath, name) if name else dirpath
            try:
                st = os.lstat(path)
                link = os.readlink(path) if os.path.islink(path) else ""
            except OSError:
                continue
            rel = os.path.relpath(path, real)
            fields = (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size, st.st_mode)
            h.update(f"{rel}\0{link}\0{fields}\0{st.st_uid}:{st.st_gid}\n".encode())
    return h.hexdigest()


def disk_key(rootfs: Path, image_digest: str | None) -> str:
    """``image-<digest hex>`` when the caller knows the image, else ``tree-<fingerprint>``."""
    if image_digest is not None:
        found = _DIGEST.match(image_digest)
        if found is None:
            raise RuntimeError_(f"{image_digest[:80]!r} is not a sha256 digest", step="container disk")
        return f"image-{found.group(1)}"
    return f"tree-{tree_fingerprint(rootfs)}"


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
    """``mkfs.ext4 -d`` the rootfs into ``image`` (no journal: it is only ever mounted read-only)."""
    size_kib = (int(_tree_bytes(rootfs) * 1.2) + SLACK_BYTES) // 1024
    cmd = ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-L", "vmsb-rootfs", "-d", str(rootfs)]
    error = run_writing([*cmd, str(image), f"{size_kib}k"], image)
    if error is not None:
        raise RuntimeError_(f"mkfs.ext4 -d {rootfs}: {error}", step="container disk")
    return image


class DiskCache:
    """The shared disks under ``root``; ``in_use`` names the disk paths containers still use."""

    def __init__(self, root: Path, in_use: Callable[[], set[str]], keep: int = DEFAULT_KEEP) -> None:
        self.root = root
        self.in_use = in_use
        self.keep = keep

    def path(self, key: str) -> Path:
        return self.root / f"{key}.v{DISK_FORMAT}.ext4"

    def get(self, rootfs: Path, image_digest: str | None = None) -> Path:
        """The disk for ``rootfs``, made now unless an identical one exists.

        A hit is checked and marked used under a shared lock, so eviction (which takes it
        exclusively and spares recently used disks) never removes a disk being handed out.
        """
        key = disk_key(rootfs, image_digest)
        target = self.path(key)
        with self._locked(target, fcntl.LOCK_SH):
            if target.is_file():
                _touch(target)
                return target
        with self._locked(target):
            if target.is_file():  # another maker finished while this one waited
                _touch(target)
                return target
            staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                make_disk(rootfs, staging)
                if image_digest is None and disk_key(rootfs, None) != key:
                    raise RuntimeError_(f"{rootfs} changed while its disk was made", step="container disk")
                os.chmod(staging, 0o444)
                staging.rename(target)
            finally:
                staging.unlink(missing_ok=True)
        return target

    def evict(self) -> list[Path]:
        """Remove the least recently used disks beyond ``keep`` that no container uses."""
        disks = sorted(self._disks(), key=_used_at, reverse=True)
        if len(disks) <= self.keep:
            return []
        busy = self.in_use()
        removed = []
        for disk in disks[self.keep :]:
            if str(disk) in busy:
                continue
            with self._locked(disk):
                if _used_at(disk) <= time.time() - RECENT_S and str(disk) not in self.in_use():
                    disk.unlink(missing_ok=True)
                    removed.append(disk)
        return removed

    def _disks(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if _NAME.match(p.name)]

    @contextlib.contextmanager
    def _locked(self, target: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)


def _touch(path: Path) -> None:
    """Record a use for eviction (the mtime; the disk itself is never written)."""
    with contextlib.suppress(OSError):
        now = time.time()
        os.utime(path, (now, now))


def _used_at(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
