"""Processes named by pid and start time, so that a stored pid is never mistaken for a reused one.

A pid written to disk (a VM handle, a runtime record) may name another process once the
original has exited and the kernel has handed the number out again. The start time in
``/proc/<pid>/stat`` (clock ticks since boot) tells the two apart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def proc_state(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of a process, None when there is none."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def start_time(pid: int) -> str | None:
    state = proc_state(pid)
    return state[1] if state else None


def running(pid: int, started: str | None = None) -> bool:
    """Alive (not a zombie) and, when ``started`` is known, the very process that was recorded."""
    state = proc_state(pid)
    if state is None or state[0] in ("Z", "X"):
        return False
    return not started or state[1] == started


def identity(pid: int | None = None) -> str:
    """``"<pid> <start time>"`` of a process (default: this one), as written to disk."""
    pid = os.getpid() if pid is None else pid
    return f"{pid} {start_time(pid) or ''}".strip()


def identity_running(text: str) -> bool:
    """Whether the process an :func:`identity` string names still runs."""
    pid, _, started = text.strip().partition(" ")
    return pid.isdigit() and running(int(pid), started or None)


def signal_recorded(pid: int, started: str | None, sig: int, *, group: bool = False) -> bool:
    """Send ``sig`` to ``pid`` (its process group with ``group``) only while it is the process
    recorded with start time ``started``; False when that process is gone.

    A pidfd pins the process while its start time is compared, so a signal cannot reach one
    that took the number over in between (for a group, the check comes just before killpg).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (OSError, AttributeError):  # no pidfds here: check, then signal by number
        fd = -1
    try:
        state = proc_state(pid)
        if state is None or (started and state[1] != started):
            return False
        if state[0] in ("Z", "X") and not group:
            return False  # a zombie holds its number (no reuse yet): its group may still live
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            elif fd >= 0:
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(pid, sig)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def kill_mentioning(text: str) -> list[int]:
    """SIGKILL every process whose command line contains ``text`` (a state path only VMs use)."""
    killed = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and running(int(entry.name)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def children(pid: int) -> list[int]:
    """Direct children of a process, from every thread's ``children`` list."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents before children."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        if current in tree or proc_state(current) is None:
            continue
        tree.append(current)
        queue += children(current)
    return tree


def stop_tree(pid: int, rounds: int = 50) -> list[int]:
    """SIGSTOP ``pid`` and every descendant, parents first, until a pass finds no process still
    running (one forked during a pass is caught by the next). Returns the stopped pids."""
    stopped: list[int] = []
    for _ in range(rounds):
        fresh = [p for p in process_tree(pid) if not _is_stopped(p)]
        if not fresh:
            return stopped
        for member in fresh:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGSTOP)
            if member not in stopped:
                stopped.append(member)
        _wait_stopped(fresh)
    return stopped


def _is_stopped(pid: int) -> bool:
    state = proc_state(pid)
    return state is None or state[0] in ("T", "t", "Z", "X")


def _wait_stopped(pids: list[int], timeout: float = 2.0) -> None:
    """SIGSTOP is asynchronous: wait until the kernel shows each process stopped (or gone)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while not _is_stopped(pid) and time.monotonic() < deadline:
            time.sleep(0.001)


def continue_tree(pid: int) -> None:
    """SIGCONT ``pid`` and every descendant."""
    for member in process_tree(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGCONT)


def tree_stopped(pid: int) -> bool:
    """Whether ``pid`` and all its descendants are stopped (zombies count as stopped)."""
    tree = process_tree(pid)
    return bool(tree) and all(_is_stopped(p) for p in tree)
