"""The guest agent's child processes on a container's path (crun/runc, mount, debugfs).

Started with ``os.posix_spawnp``, not the ``subprocess`` module: that brings ``locale``, ``re``,
``enum``, ``signal`` and ``selectors`` along, about 7 ms on the host and a large share of the
first create under emulation, which waits for the container machinery to load. What
``subprocess`` would do for these children is done here too:

- like ``close_fds``, a child gets only the three descriptors it is given: every spawn first
  makes the agent's others non-inheritable (Python opens them so; this also covers descriptors
  that arrived over a socket, which the kernel hands over inheritable);
- like ``restore_signals``, the signals the interpreter ignores (SIGPIPE, SIGXFSZ) are back at
  their defaults in the child, and no signal is blocked.

The exec sessions and the network set-up keep ``subprocess`` (pipes with time-outs, terminals):
they are not on the first create's path.
"""

from __future__ import annotations

import _signal
import contextlib
import os

#: Where the agent's own descriptors are listed.
FD_DIR = "/proc/self/fd"
#: Restored to their defaults in every child: the interpreter ignores them for itself.
DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


class Child:
    """A spawned process, waited for by its pid (the agent reaps only the pids it knows)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        #: The exit code once reaped, as ``subprocess`` gives it: ``-N`` for death by signal N.
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _seal_descriptors() -> None:
    """Make every descriptor above 2 non-inheritable, so a spawned child gets none of them."""
    for name in os.listdir(FD_DIR):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # closed meanwhile, as the listing's own is
                os.set_inheritable(fd, False)


def spawn(argv: list[str], stdin: int, stdout: int, stderr: int) -> Child:
    """Start ``argv`` (found on PATH unless absolute) with these descriptors as its 0, 1 and 2.

    Raises ``OSError`` (``FileNotFoundError`` and the like) when it cannot be executed.
    """
    stdio = (stdin, stdout, stderr)
    if any(fd < 3 and fd != target for target, fd in enumerate(stdio)):
        raise ValueError(f"spawn: descriptors 0-2 may only stand for themselves, got {stdio}")
    _seal_descriptors()
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio) if fd != target]
    pid = os.posix_spawnp(
        argv[0], argv, os.environ, file_actions=actions, setsigdef=DEFAULT_SIGNALS, setsigmask=()
    )
    return Child(pid)


def run(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` to its end, stdin from /dev/null; its exit code and its output (stdout and
    stderr together, for an error message)."""
    out_r, out_w = os.pipe()
    try:
        null = open_null()
        try:
            child = spawn(argv, null, out_w, out_w)
        finally:
            os.close(null)
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
    with open(out_r, "rb") as out:
        output = out.read()
    return child.wait(), output.decode(errors="replace")


def open_null() -> int:
    """/dev/null for a child's stdin or stdout; the caller closes it once the child is spawned."""
    return os.open(os.devnull, os.O_RDWR)
