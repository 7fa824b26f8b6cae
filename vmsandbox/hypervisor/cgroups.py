"""A cgroup of its own for each VM's processes, outside the node agent's.

A container runtime that restarts the agent's container kills every process of the container's
cgroup. A VMM that lives in a cgroup of its own (``<parent>/<container id>``, by default
``vmsandbox.slice/<id>``) survives that, and the same cgroup bounds what the VMM may use: memory
(the VM's plus an overhead for the VMM itself) and CPU time (the VM's vCPUs).

On cgroup v2 that is one directory; on v1 (and hybrid hosts) the same path in every mounted
hierarchy, so that no hierarchy keeps the VMM in the agent's group. Only mounts of a whole
hierarchy are used (root ``/``, or ``/..``-only in a cgroup namespace below the host's): a
mount that shows a container's own subtree cannot hold a cgroup outside that container. In a
cgroup namespace of its own (a container on a v2 node), a process may move others only within
that namespace, so the movers enter the host's (:func:`host_namespace`), which needs hostPID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from vmsandbox.hypervisor.base import HypervisorError

CFS_PERIOD_US = 100_000
CLONE_NEWCGROUP = 0x02000000
#: cgroup v2 controllers the VM cgroup needs enabled in every ancestor's subtree_control.
V2_CONTROLLERS = ("memory", "cpu")


class CgroupError(HypervisorError):
    """A VM's cgroup could not be created, joined, limited or removed."""

    step = "cgroup"


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: v2, or v1 with its controllers (``name=systemd`` included)."""

    mount: Path
    version: int
    controllers: frozenset[str]


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    vcpus: int


def hierarchies(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Hierarchy]:
    """Every cgroup hierarchy mounted here in full, each once."""
    found: dict[str, Hierarchy] = {}
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3].split(",")
            whole = all(part in ("", "..") for part in fields[3].split("/"))
            if fstype not in ("cgroup", "cgroup2") or not whole or fields[2] in found:
                continue
            mount = Path(fields[4])
            if fstype == "cgroup2":
                controllers = _read(mount / "cgroup.controllers").split()
                found[fields[2]] = Hierarchy(mount, 2, frozenset(controllers))
            else:
                known = {"rw", "ro", "noprefix", "clone_children", "xattr", "nsdelegate"}
                names = {o for o in options if (o not in known and "=" not in o) or o.startswith("name=")}
                found[fields[2]] = Hierarchy(mount, 1, frozenset(names))
    return list(found.values())


def host_namespace() -> Path | None:
    """The host's cgroup namespace (pid 1's) when this process is in another one, else None."""
    try:
        if os.readlink("/proc/self/ns/cgroup") != os.readlink("/proc/1/ns/cgroup"):
            return Path("/proc/1/ns/cgroup")
    except OSError:
        pass
    return None


def enter_host_namespace() -> None:
    """setns(2) into the host's cgroup namespace, in a single-threaded (forked) child."""
    target = host_namespace()
    if target is None:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(target, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWCGROUP) != 0:
            errno = ctypes.get_errno()
            raise CgroupError(f"cannot enter the host's cgroup namespace: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc


class VMCgroup:
    """The cgroup ``path`` (relative, e.g. ``vmsandbox.slice/<id>``) in every hierarchy."""

    def __init__(self, path: str, found: list[Hierarchy] | None = None) -> None:
        parts = Path(path).parts
        if not parts or Path(path).is_absolute() or any(p in ("", ".", "..") for p in parts):
            raise CgroupError(f"cgroup path {path!r} must be relative, without '.' or '..'")
        self.path = path
        self.hierarchies = hierarchies() if found is None else found

    def dirs(self) -> list[Path]:
        return [h.mount / self.path for h in self.hierarchies]

    def procs_files(self) -> list[Path]:
        """The files a process writes its pid to in order to join (one per hierarchy)."""
        return [d / "cgroup.procs" for d in self.dirs()]

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.dirs())

    # ---- creation ----------------------------------------------------------------------

    def create(self, limits: Limits | None) -> None:
        """Make the directories (parents included) and set the limits; all or nothing."""
        if not self.hierarchies:
            raise CgroupError("no cgroup hierarchy is mounted (looked in /proc/self/mountinfo)")
        try:
            for hierarchy in self.hierarchies:
                self._make(hierarchy)
                if limits is not None:
                    self._limit(hierarchy, limits)
        except BaseException:
            with contextlib.suppress(CgroupError):
                self.remove(timeout=1.0)
            raise

    def _make(self, hierarchy: Hierarchy) -> None:
        current = hierarchy.mount
        for part in Path(self.path).parts:
            if hierarchy.version == 2:
                self._delegate(hierarchy, current)
            child = current / part
            try:
                child.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {child}: {exc.strerror or exc}") from exc
            if "cpuset" in hierarchy.controllers and hierarchy.version == 1:
                # A v1 cpuset starts empty, and no process may join an empty one. Filled whoever
                # made the directory: a concurrent create of a sibling may have made it an
                # instant ago and not filled it yet (the same values, so writing twice is fine).
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if not _read(child / name):
                        _write(child / name, _read(current / name))
            current = child

    @staticmethod
    def _delegate(hierarchy: Hierarchy, directory: Path) -> None:
        """Enable the memory and cpu controllers for ``directory``'s children (v2)."""
        wanted = [c for c in V2_CONTROLLERS if c in hierarchy.controllers]
        enabled = set(_read(directory / "cgroup.subtree_control").split())
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))

    def _limit(self, hierarchy: Hierarchy, limits: Limits) -> None:
        directory = hierarchy.mount / self.path
        quota = limits.vcpus * CFS_PERIOD_US
        if hierarchy.version == 2:
            if "memory" in hierarchy.controllers:
                _write(directory / "memory.max", str(limits.memory_bytes))
            if "cpu" in hierarchy.controllers:
                _write(directory / "cpu.max", f"{quota} {CFS_PERIOD_US}")
            return
        if "memory" in hierarchy.controllers:
            _write(directory / "memory.limit_in_bytes", str(limits.memory_bytes))
        if "cpu" in hierarchy.controllers:
            _write(directory / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(directory / "cpu.cfs_quota_us", str(quota))

    # ---- members -----------------------------------------------------------------------

    def join(self, pid: int) -> None:
        """Move ``pid`` (all its threads) into this cgroup in every hierarchy."""
        for procs in self.procs_files():
            _write(procs, str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files():
            found.update(int(p) for p in _read(procs).split() if p.isdigit())
        return found

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the cgroup until none is left (new ones may be forking)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids() - {os.getpid()}
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                raise CgroupError(f"processes {sorted(pids)} in cgroup {self.path} survived SIGKILL")
            time.sleep(0.01)

    def remove(self, timeout: float = 5.0, *, kill: bool = True) -> None:
        """Kill what is left in it (unless ``kill`` is false) and remove its directories; its
        parents stay."""
        if kill:
            self.kill(timeout)
        deadline = time.monotonic() + timeout
        for directory in self.dirs():
            nested = sorted((p for p in directory.glob("**/") if p != directory), key=lambda p: -len(p.parts))
            for target in [*nested, directory]:
                _rmdir(target, deadline)


def _rmdir(directory: Path, deadline: float) -> None:
    try:
        rmdir_retried(directory, deadline)
    except OSError as exc:
        raise CgroupError(f"cannot remove cgroup {directory}: {exc.strerror or exc}") from exc


def rmdir_retried(directory: Path, deadline: float) -> None:
    """``rmdir`` a cgroup, retried while the kernel still counts exited members (EBUSY); one
    already gone is fine. The last error is raised once ``deadline`` has passed."""
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def procs_files(path: str | None) -> list[Path]:
    """The ``cgroup.procs`` files of ``path`` in every hierarchy; none when ``path`` is None."""
    return VMCgroup(path).procs_files() if path else []


def remove_unowned(parent: str, owned: set[str], found: list[Hierarchy] | None = None) -> list[str]:
    """Remove every empty cgroup under ``parent`` whose name is not in ``owned``; returns their names.

    Never kills: a VMM still running in such a cgroup is stopped through its VM directory, and
    another runtime root may share the parent.
    """
    found = hierarchies() if found is None else found
    names: set[str] = set()
    for hierarchy in found:
        top = hierarchy.mount / parent
        if top.is_dir():
            names.update(p.name for p in top.iterdir() if p.is_dir())
    removed = []
    for name in sorted(names - owned):
        with contextlib.suppress(CgroupError):
            cgroup = VMCgroup(f"{parent}/{name}", found)
            if cgroup.pids():
                continue
            cgroup.remove(timeout=1.0, kill=False)
            removed.append(name)
    return removed
