"""Starting, watching and ending the ``cloud-hypervisor`` process.

The VMM runs in its own session (so its process group is its own and a terminal's signals do
not reach it) with stdout/stderr in a per-VM log file. Later calls may come from another,
short-lived process holding only the PID, so liveness is read from ``/proc`` and a PID is only
signalled after checking that its command line still names this VM's API socket (PIDs are
reused).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from vmsandbox.hypervisor.cloud_hypervisor.errors import VmmLaunchError
from vmsandbox.hypervisor.procs import running


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
    binary: str, args: list[str], api_socket: Path, log_path: Path, netns: Path | None = None
) -> subprocess.Popen[bytes]:
    """``<binary> --api-socket path=<socket> <args>`` with its output appended to ``log_path``.

    ``netns``: the network namespace holding the VM's tap, when it is not this process's own;
    the VMM opens the tap by name, so it runs there (``nsenter`` execs it: the pid is the VMM's).
    """
    executable = resolve_binary(binary)
    enter = ["nsenter", f"--net={netns}"] if netns is not None else []
    with open(log_path, "ab") as log:
        try:
            return subprocess.Popen(
                [*enter, executable, "--api-socket", f"path={api_socket}", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise VmmLaunchError(binary, exc.strerror or str(exc)) from exc


def owns_socket(pid: int, api_socket: Path) -> bool:
    """Whether ``pid`` is still the VMM started for ``api_socket`` (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(api_socket).encode() in cmdline


def wait_gone(pid: int, timeout: float, child: subprocess.Popen[bytes] | None = None) -> bool:
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


def kill(pid: int, child: subprocess.Popen[bytes] | None = None) -> None:
    """SIGKILL the VMM's whole process group, then reap it if it is our child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
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
