"""Turning a :mod:`protocol` rootfs source into a directory the OCI runtime can use.

In a real VM a :class:`BlockDevice` is the virtio-blk disk whose ``/sys/block/vd*/serial``
matches; it is mounted as ext4. A shared disk (``overlay``) is one image's disk attached
read-only to every VM that runs it: it is mounted read-only and the container writes to an
overlay whose upper layer is a tmpfs of its own, so nothing it writes reaches the disk.

When the agent runs as a host process standing in for a guest (the Cloud Hypervisor stand-in),
``VMSANDBOX_GUEST_DISKS`` names a JSON file mapping serial to image path, re-read on every
lookup because the stand-in rewrites it on hot-plug; the image is then unpacked with ``debugfs
rdump`` into a private directory instead of being mounted, so no loop device is needed.
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


_MNT_DETACH = 2
_MS_RDONLY = 1


def _mount(source: str, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2) through libc: no helper process per mount (ctypes loads only when needed)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, data.encode() or None)
    if rc != 0:
        errno = ctypes.get_errno()
        raise RootfsError(f"mount -t {fstype} {source} {target}: {os.strerror(errno)}")


def _umount(target: Path) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).umount2(str(target).encode(), _MNT_DETACH)


class PreparedRootfs:
    """A rootfs directory plus how to release it when the container is destroyed."""

    def __init__(
        self,
        path: Path,
        mounted: bool = False,
        owned_dir: Path | None = None,
        mounts: list[Path] | None = None,
    ) -> None:
        self.path = path
        self.owned_dir = owned_dir
        #: Mount points to detach on release, innermost first.
        self.mounts: list[Path] = mounts if mounts is not None else ([path] if mounted else [])

    @property
    def mounted(self) -> bool:
        return bool(self.mounts)

    def release(self) -> None:
        while self.mounts:
            _umount(self.mounts.pop(0))


def _layer(path: Path) -> str:
    """A path the overlay's option string cannot misread."""
    text = str(path)
    if any(c in text for c in ",:\\\n"):
        raise RootfsError(f"{text!r} cannot be an overlay layer")
    return text


def _overlay(lower: Path | None, device: Path | None, workdir: Path, target: Path) -> PreparedRootfs:
    """A read-only lower layer (a directory, or the shared disk mounted read-only) under an
    upper layer private to this container: a tmpfs in a VM, the container's own directory on
    the host (whose disk it then uses, as a copy of the image did)."""
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    done = PreparedRootfs(target, mounts=[])
    try:
        if device is not None:
            lower = workdir / "lower"
            lower.mkdir(exist_ok=True)
            _mount(str(device), lower, "ext4", _MS_RDONLY)
            done.mounts.insert(0, lower)
            _mount("vmsb-scratch", scratch, "tmpfs", 0, "mode=0755")
            done.mounts.insert(0, scratch)
        assert lower is not None
        (scratch / "upper").mkdir(mode=0o755)
        (scratch / "work").mkdir(mode=0o755)
        layers = f"lowerdir={_layer(lower)},upperdir={_layer(scratch / 'upper')}"
        _mount("vmsb-rootfs", target, "overlay", 0, f"{layers},workdir={_layer(scratch / 'work')}")
        done.mounts.insert(0, target)
    except BaseException:
        done.release()
        raise
    return done


def prepare_rootfs(source: HostPath | BlockDevice, workdir: Path, wait: float = 10.0) -> PreparedRootfs:
    """Make ``source`` available as a directory; ``workdir`` belongs to the container."""
    if isinstance(source, HostPath):
        path = Path(source.path)
        if not path.is_dir():
            raise RootfsError(f"host path {path} is not a directory")
        if not source.overlay:
            return PreparedRootfs(path)
    target = workdir / "rootfs"
    target.mkdir(parents=True, exist_ok=True)
    if isinstance(source, HostPath):
        return _overlay(Path(source.path), None, workdir, target)
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
            if device is not None and source.overlay:
                return _overlay(None, device, workdir, target)
            if device is not None:
                _run(["mount", "-t", "ext4", str(device), str(target)], f"mount {device}")
                return PreparedRootfs(target, mounted=True)
        if time.monotonic() >= deadline:
            where = f"{DISKS_ENV}={table}" if table else f"{SYS_BLOCK}/vd*/serial"
            raise RootfsError(f"no disk with serial {source.serial!r} in {where}")
        time.sleep(0.05)
