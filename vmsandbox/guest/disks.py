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

import os
import time

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest import jsontext, spawn
from vmsandbox.guest.protocol import BlockDevice, HostPath

#: True only for type checkers; importing typing would cost the first create under emulation.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DISKS_ENV = "VMSANDBOX_GUEST_DISKS"
SYS_BLOCK = "/sys/block"


class RootfsError(VMSandboxError):
    step = "container rootfs"


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _emulated_image(serial: str, table: str) -> str | None:
    try:
        mapping = jsontext.loads(_read(table))
    except (OSError, ValueError) as exc:
        raise RootfsError(f"cannot read {DISKS_ENV}={table}: {exc}") from exc
    image = mapping.get(serial) if isinstance(mapping, dict) else None
    return image if isinstance(image, str) else None


def _find_block_device(serial: str) -> str | None:
    try:
        names = sorted(name for name in os.listdir(SYS_BLOCK) if name.startswith("vd"))
    except OSError:
        return None
    for name in names:
        try:
            if _read(os.path.join(SYS_BLOCK, name, "serial")).strip() == serial:
                return "/dev/" + name
        except OSError:
            continue
    return None


def _run(cmd: list[str], what: str) -> None:
    code, output = spawn.run(cmd)
    if code != 0:
        raise RootfsError(f"{what}: {output.strip() or code}")


_MNT_DETACH = 2
_MS_RDONLY = 1
#: libc through ctypes, opened once (see :func:`load_libc`).
_LIBC: Any = None


def load_libc() -> None:
    """Import ctypes and open libc for :func:`_mount` now, off a create's path: the agent calls
    this in the background once it listens (an idle pool member has it ready for its claim)."""
    _libc()


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2) through libc: no helper process per mount."""
    import ctypes

    rc = _libc().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
    if rc != 0:
        errno = ctypes.get_errno()
        raise RootfsError(f"mount -t {fstype} {source} {target}: {os.strerror(errno)}")


def _umount(target: str) -> None:
    _libc().umount2(target.encode(), _MNT_DETACH)


class PreparedRootfs:
    """A rootfs directory plus how to release it when the container is destroyed."""

    def __init__(
        self,
        path: str,
        mounted: bool = False,
        owned_dir: str | None = None,
        mounts: list[str] | None = None,
    ) -> None:
        self.path = path
        self.owned_dir = owned_dir
        #: Mount points to detach on release, innermost first.
        self.mounts: list[str] = mounts if mounts is not None else ([path] if mounted else [])

    @property
    def mounted(self) -> bool:
        return bool(self.mounts)

    def release(self) -> None:
        while self.mounts:
            _umount(self.mounts.pop(0))


def _layer(path: str) -> str:
    """A path the overlay's option string cannot misread."""
    if any(c in path for c in ",:\\\n"):
        raise RootfsError(f"{path!r} cannot be an overlay layer")
    return path


def _overlay(lower: str | None, device: str | None, workdir: str, target: str) -> PreparedRootfs:
    """A read-only lower layer (a directory, or the shared disk mounted read-only) under an
    upper layer private to this container: a tmpfs in a VM, the container's own directory on
    the host (whose disk it then uses, as a copy of the image did)."""
    scratch = os.path.join(workdir, "scratch")
    os.makedirs(scratch, exist_ok=True)
    done = PreparedRootfs(target, mounts=[])
    try:
        if device is not None:
            lower = os.path.join(workdir, "lower")
            os.makedirs(lower, exist_ok=True)
            _mount(device, lower, "ext4", _MS_RDONLY)
            done.mounts.insert(0, lower)
            _mount("vmsb-scratch", scratch, "tmpfs", 0, "mode=0755")
            done.mounts.insert(0, scratch)
        assert lower is not None
        upper, work = os.path.join(scratch, "upper"), os.path.join(scratch, "work")
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o755)
        layers = f"lowerdir={_layer(lower)},upperdir={_layer(upper)}"
        _mount("vmsb-rootfs", target, "overlay", 0, f"{layers},workdir={_layer(work)}")
        done.mounts.insert(0, target)
    except BaseException:
        done.release()
        raise
    return done


def prepare_rootfs(source: HostPath | BlockDevice, workdir: str, wait: float = 10.0) -> PreparedRootfs:
    """Make ``source`` available as a directory; ``workdir`` belongs to the container."""
    if isinstance(source, HostPath):
        path = source.path
        if not os.path.isdir(path):
            raise RootfsError(f"host path {path} is not a directory")
        if not source.overlay:
            return PreparedRootfs(path)
    target = os.path.join(workdir, "rootfs")
    os.makedirs(target, exist_ok=True)
    if isinstance(source, HostPath):
        return _overlay(source.path, None, workdir, target)
    table = os.environ.get(DISKS_ENV)
    deadline = time.monotonic() + wait
    while True:
        if table:
            image = _emulated_image(source.serial, table)
            if image is not None:
                _run(["debugfs", "-R", f"rdump / {target}", image], f"unpack disk {source.serial}")
                return PreparedRootfs(target, owned_dir=target)
        else:
            device = _find_block_device(source.serial)
            if device is not None and source.overlay:
                return _overlay(None, device, workdir, target)
            if device is not None:
                _run(["mount", "-t", "ext4", device, target], f"mount {device}")
                return PreparedRootfs(target, mounted=True)
        if time.monotonic() >= deadline:
            where = f"{DISKS_ENV}={table}" if table else f"{SYS_BLOCK}/vd*/serial"
            raise RootfsError(f"no disk with serial {source.serial!r} in {where}")
        time.sleep(0.05)
