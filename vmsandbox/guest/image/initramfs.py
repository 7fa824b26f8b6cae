"""The initramfs: busybox, the guest's kernel modules and ``init.sh`` as ``/init``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vmsandbox.guest.image import cpio
from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.modules import ModulePlan

#: The load list ``init.sh`` reads, one absolute module path per line, followed by the
#: comma-separated virtio device types of which the VM must have one for it to load, if any.
MODULE_LIST = "etc/vmsandbox/modules"
#: The directory of symlinks ``init.sh`` copies into the guest's /dev, in one process.
DEV_LINKS = "etc/vmsandbox/devlinks"
DEV_SYMLINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


def modules_dep(plan: ModulePlan) -> bytes:
    """A ``modules.dep`` for busybox ``modprobe -a``, which loads the whole list in one process
    (a process per module costs the boot ~10 ms each under emulation). The list already has each
    module's dependencies before it, so every line names the module alone."""
    return "".join(f"{relative}:\n" for relative in plan.load_order).encode()


def init_script() -> bytes:
    return resources.files(__package__).joinpath("init.sh").read_bytes()


def find_busybox(busybox_root: Path) -> Path:
    for candidate in ("bin/busybox", "usr/bin/busybox"):
        path = busybox_root / candidate
        if path.is_file():
            return path
    raise GuestImageError(
        f"the busybox-static package has no busybox binary under {busybox_root}", step="initramfs"
    )


def entries(busybox: Path, modules_dir: Path, release: str, plan: ModulePlan) -> list[cpio.Entry]:
    """Archive members, parents before children."""
    directories = ("bin", "dev", "etc", "etc/vmsandbox", DEV_LINKS, "newroot", "overlay", "proc", "sys")
    members = [cpio.directory(name) for name in directories]
    members.extend(cpio.symlink(f"{DEV_LINKS}/{name}", target) for name, target in DEV_SYMLINKS.items())
    # The kernel opens /dev/console before running /init; without the node init has no stdio.
    members.append(cpio.char_device("dev/console", 5, 1))
    members.append(cpio.regular("bin/busybox", busybox.read_bytes(), 0o755))
    made = {"lib", "lib/modules", f"lib/modules/{release}"}
    members.extend(cpio.directory(name) for name in sorted(made))
    load_list = []
    for relative in plan.load_order:
        parts = f"lib/modules/{release}/{relative}".split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in made:
                made.add(parent)
                members.append(cpio.directory(parent))
        members.append(cpio.regular("/".join(parts), (modules_dir / relative).read_bytes()))
        devices = ",".join(str(device) for device in plan.only_with.get(relative, []))
        load_list.append(f"/{'/'.join(parts)} {devices}".rstrip())
    members.append(cpio.regular(f"lib/modules/{release}/modules.dep", modules_dep(plan)))
    members.append(cpio.regular(MODULE_LIST, "".join(f"{line}\n" for line in load_list).encode()))
    members.append(cpio.regular("init", init_script(), 0o755))
    return members


def write(out: Path, busybox_root: Path, modules_dir: Path, release: str, plan: ModulePlan) -> None:
    cpio.write_gzipped(out, entries(find_busybox(busybox_root), modules_dir, release, plan))
