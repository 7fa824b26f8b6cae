"""Starting a VMM that is no child of its starter, in a session and cgroup of its own.

The node agent (or a short-lived ``vmsandbox-runtime``) starts VMMs; they must outlive it, even
when a container runtime kills every process of the agent's cgroup. So a small ``sh`` joins the
VM's cgroup first (every hierarchy), starts a waiter through ``setsid`` (a session and process
group of its own) in the background, and exits. The waiter starts the program, waits for it and
writes its exit status to a file. Program and waiter are then init's (or the nearest
subreaper's) descendants, never the starter's: nothing in the starter has to reap them, and
they are in their own cgroup from their first instruction, children included.

The caller learns the program's pid and start time (to tell it from a reused pid), and reads
its exit status from the file, whichever process asks and however often the starter restarted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.cgroups import host_namespace
from vmsandbox.hypervisor.procs import identity, identity_running, running, start_time

#: The waiter: $1 is the status file, the rest the program. It prints its own pid and the
#: program's, lets go of the launcher's pipe, waits, and writes the status as the shell reports it
#: (128+N: signal N).
WAITER = r"""
unset WAITER
status=$1; shift
"$@" 1>&2 &
echo "$$ $!"
exec >/dev/null
wait $!
code=$?
[ "$status" = - ] || { echo $code > "$status.tmp" && mv -f "$status.tmp" "$status"; }
"""
#: The launcher: $1 is how many cgroup.procs files follow; then those files, the status file, and
#: the program. A shell without job control gives background jobs /dev/null as stdin.
SCRIPT = r"""
n=$1; shift
while [ "$n" -gt 0 ]; do
  echo $$ > "$1" || exit 125
  shift; n=$((n - 1))
done
setsid /bin/sh -c "$WAITER" sh "$@" &
"""


class SpawnError(HypervisorError):
    step = "vmm start"


class Detached:
    """A started program: its pid, start time (``/proc/<pid>/stat``) and exit status file.

    Answers ``poll``, ``wait`` and ``returncode`` as :class:`subprocess.Popen` does (a negative
    status for a signal), for callers written against it.
    """

    def __init__(self, pid: int, started: str, status_file: Path | None, waiter: str = "") -> None:
        self.pid = pid
        self.started = started
        self.status_file = status_file
        #: ``"<pid> <start time>"`` of the waiter, the leader of the program's session.
        self.waiter = waiter

    def alive(self) -> bool:
        return running(self.pid, self.started or None)

    @property
    def returncode(self) -> int | None:
        return None if self.alive() else exit_status(self.status_file)

    def poll(self) -> int | None:
        """None while it runs; its status once it ended (waiting briefly for the waiter to write it)."""
        if self.alive():
            return None
        deadline = time.monotonic() + 1.0
        status = exit_status(self.status_file)
        while status is None and time.monotonic() < deadline:
            time.sleep(0.01)
            status = exit_status(self.status_file)
        return -1 if status is None else status

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.01)
        return code


def exit_status(status_file: Path | None) -> int | None:
    """The status a waiter wrote, as Popen reports it (-N for signal N); None if none yet."""
    if status_file is None:
        return None
    try:
        text = status_file.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    value = int(text)
    return -(value - 128) if value > 128 else value


def kill_session(pid: int, started: str | None, waiter: str | None = None) -> None:
    """SIGKILL the program ``pid`` and its waiter (the leader of its process group), each only
    when it is still the very process that was started."""
    if running(pid, started or None):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if waiter and identity_running(waiter):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(waiter.split()[0]), signal.SIGKILL)


def waiter_gone(waiter: str | None, timeout: float = 5.0) -> bool:
    """Wait until the waiter has exited (it does right after its program, or when killed)."""
    deadline = time.monotonic() + timeout
    while waiter and identity_running(waiter):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def spawn_detached(
    argv: list[str],
    *,
    log: IO[bytes],
    cgroup_procs: list[Path] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    status_file: Path | None = None,
) -> Detached:
    """Start ``argv`` in its own session, in the cgroup whose ``cgroup.procs`` files are given;
    its exit status goes to ``status_file`` (default: nowhere)."""
    if shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None and not Path(argv[0]).is_file():
        raise SpawnError(f"cannot start {argv[0]}: not found")
    procs = [str(p) for p in cgroup_procs or []]
    status = str(status_file) if status_file is not None else "-"
    cmd = ["/bin/sh", "-c", SCRIPT, "sh", str(len(procs)), *procs, status, *argv]
    namespace = host_namespace() if procs else None
    if namespace is not None:  # only from there may it move itself out of the agent's cgroup
        cmd = ["nsenter", f"--cgroup={namespace}", "--", *cmd]
    launch_env = dict(os.environ if env is None else env)
    launch_env["WAITER"] = WAITER
    if status_file is not None:
        status_file.unlink(missing_ok=True)
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=launch_env,
            cwd=cwd,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpawnError(f"cannot start {argv[0]}: {exc}") from exc
    text = done.stdout.decode(errors="replace").split()
    if done.returncode != 0 or len(text) != 2 or not all(t.isdigit() for t in text):
        where = f" (joining {', '.join(procs)})" if done.returncode == 125 else ""
        raise SpawnError(f"cannot start {argv[0]}: the launcher exited with {done.returncode}{where}")
    waiter, pid = int(text[0]), int(text[1])
    return Detached(pid, start_time(pid) or "", status_file, identity(waiter))
