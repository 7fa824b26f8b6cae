"""What a test looks for after a fault: processes and sockets that should be gone."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path


def processes_mentioning(text: str) -> list[str]:
    """``"<pid>: <command line>"`` of every live process (zombies excluded) that mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def pids_mentioning(text: str) -> list[int]:
    return [int(line.split(":", 1)[0]) for line in processes_mentioning(text)]


def sockets_under(root: Path) -> list[Path]:
    """Unix sockets left anywhere below ``root``."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    found.append(path)
            except OSError:
                continue
    return found


def cgroups_left(parent: str) -> list[str]:
    """Names of the cgroups under ``parent`` (any hierarchy); each is removed (its processes
    killed) and ``parent`` too, so that a failed test leaks nothing into the next."""
    from vmsandbox.hypervisor.cgroups import VMCgroup

    tops = [top for top in VMCgroup(parent).dirs() if top.is_dir()]
    left = sorted({d.name for top in tops for d in top.iterdir() if d.is_dir()})
    for name in left:
        with contextlib.suppress(OSError):
            VMCgroup(f"{parent}/{name}").remove()
    for top in tops:
        with contextlib.suppress(OSError):
            top.rmdir()
    return left


@contextlib.contextmanager
def private_cgroup_parent(prefix: str) -> Iterator[str]:
    """A cgroup parent for one test alone: it must be empty when the test ends (and is removed)."""
    parent = f"vmsandbox.slice/{prefix}{uuid.uuid4().hex[:10]}"
    yield parent
    left = cgroups_left(parent)
    assert not left, f"VM cgroups left behind under {parent}: {left}"
