"""Starting, watching and ending the ``cloud-hypervisor`` process.

The VMM runs in a session of its own (so a terminal's signals do not reach it) and in the VM's
cgroup, as no child of its starter (:mod:`vmsandbox.hypervisor.detached`), with stdout/stderr
in a per-VM log file and its exit status in a file next to it. Later calls may come from another,
short-lived process holding only the PID, so liveness is read from ``/proc`` and a PID is only
signalled after checking that its command line still names this VM's API socket (PIDs are
reused).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from vmsandbox.hypervisor.cgroups import procs_files
from vmsandbox.hypervisor.cloud_hypervisor.errors import VmmLaunchError
from vmsandbox.hypervisor.detached import Detached, SpawnError, kill_session, spawn_detached
from vmsandbox.hypervisor.procs import running
from vmsandbox.hypervisor.vmmuser import VmmUser


def resolve_binary(binary: str) -> str:
    """The absolute path of the VMM binary, or a clear error naming what is wrong with it."""
    if os.sep in binary:
        path = Path(binary)
        if not path.exists():
            raise VmmLaunchError(binary, "no such file")
        if path.is_dir() or not os.access(path, os.X_OK):
            raise VmmLaunchError(binary, "not an executable file")
        return str(path.resolve())
    found = shutil.which(binary)
    if found is None:
        raise VmmLaunchError(binary, f"not found on PATH ({os.environ.get('PATH', '')})")
    return found


def launch(
    binary: str,
    args: list[str],
    api_socket: Path,
    log_path: Path,
    cgroup: str | None = None,
    netns: Path | None = None,
    user: VmmUser | None = None,
) -> Detached:
    """``<binary> --api-socket path=<socket> <args>`` with its output appended to ``log_path``.

    ``netns``: the network namespace holding the VM's tap, when it is not this process's own;
    the VMM opens the tap by name, so it runs there (``nsenter`` execs it: the pid is the VMM's).
    ``user``: the user it runs as (``setpriv`` after ``nsenter``: only root may enter a namespace).
    """
    executable = resolve_binary(binary)
    enter = ["nsenter", f"--net={netns}"] if netns is not None else []
    enter += user.prefix() if user is not None else []
    with open(log_path, "ab") as log:
        try:
            return spawn_detached(
                [*enter, executable, "--api-socket", f"path={api_socket}", *args],
                log=log,
                cgroup_procs=procs_files(cgroup),
                status_file=log_path.with_name("cloud-hypervisor.status"),
            )
        except SpawnError as exc:
            raise VmmLaunchError(binary, exc.detail) from exc


def owns_socket(pid: int, api_socket: Path) -> bool:
    """Whether ``pid`` is still the VMM started for ``api_socket`` (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(api_socket).encode() in cmdline


def wait_gone(pid: int, timeout: float, child: Detached | None = None) -> bool:
    """Wait until the process has ended (reaping it when it is our child)."""
    deadline = time.monotonic() + timeout
    while True:
        if child is not None:
            if child.poll() is not None:
                return True
        elif not running(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def kill(pid: int, child: Detached | None = None) -> None:
    """SIGKILL the VMM and its waiter, then wait until it is gone."""
    kill_session(pid, child.started if child is not None else None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    else:
        wait_gone(pid, 5)


def log_tail(log_path: Path, lines: int = 15) -> str:
    """The last lines of the VMM log, for error messages."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
