"""Files of a snapshot directory that every driver handles the same way: the directory itself,
writable disks copied in at snapshot time and copied out again for each restored VM."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vmsandbox.hypervisor.base import DiskSpec, HypervisorError, SnapshotManifest
from vmsandbox.hypervisor.filecmd import run_writing


def new_snapshot_dir(directory: Path) -> Path:
    """Create ``directory`` (absolute); refuse one that already holds anything."""
    directory = directory.absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise HypervisorError(f"snapshot directory {directory} exists and is not empty", step="snapshot")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.contextmanager
def snapshot_dir(directory: Path) -> Iterator[Path]:
    """A new snapshot directory for the ``with`` body to fill; removed again when the body fails,
    so a failed snapshot leaves nothing that a restore could take for one."""
    target = new_snapshot_dir(directory)
    try:
        yield target
    except BaseException:
        remove_dir(target)
        raise


def copy_file(source: Path, target: Path) -> None:
    """A sparse copy that shares blocks where the filesystem can (reflink)."""
    error = run_writing(["cp", "--reflink=auto", "--sparse=always", str(source), str(target)], target)
    if error is not None:
        raise HypervisorError(f"cannot copy {source}: {error}", step="snapshot disks")


def keep_disks(disks: list[DiskSpec], directory: Path) -> list[DiskSpec]:
    """The manifest's disk list: read-only disks by path, writable ones copied into ``directory``
    (the VM is paused, so the copy is consistent with the memory image)."""
    kept = []
    for disk in disks:
        if disk.readonly:
            kept.append(disk)
            continue
        name = f"disk-{disk.serial}.img"
        copy_file(disk.path, directory / name)
        kept.append(disk.model_copy(update={"path": Path(name)}))
    return kept


def disks_for_restore(manifest: SnapshotManifest, directory: Path, state_dir: Path) -> list[DiskSpec]:
    """The restored VM's disks: read-only ones where they were (checked), writable ones copied
    from the snapshot into the new VM's state directory, so each restored VM owns its copy."""
    disks = []
    for disk in manifest.disks:
        if disk.readonly:
            if not disk.path.is_file():
                raise HypervisorError(
                    f"snapshot disk {disk.serial}: {disk.path} no longer exists", step="restore disks"
                )
            disks.append(disk)
            continue
        source = directory / disk.path.name
        if disk.path.is_absolute() or not source.is_file():
            raise HypervisorError(f"snapshot disk {disk.serial}: {source} is missing", step="restore disks")
        target = state_dir / source.name
        copy_file(source, target)
        disks.append(disk.model_copy(update={"path": target}))
    return disks


def link_into(source: Path, target: Path) -> None:
    """Make ``target`` name ``source`` without copying: a hard link, else a symlink."""
    try:
        os.link(source, target)
    except OSError:
        target.symlink_to(source)


def remove_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
