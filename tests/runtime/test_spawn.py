"""The guest agent's children without ``subprocess``: descriptors, signals, exit codes, errors."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from vmsandbox.guest import spawn

SH = "/bin/sh"


def test_run_gives_the_exit_code_and_both_streams() -> None:
    code, output = spawn.run([SH, "-c", "echo out; echo err >&2; exit 3"])
    assert code == 3
    assert output.splitlines() == ["out", "err"]


def test_run_finds_programs_on_path_and_reads_stdin_from_dev_null() -> None:
    code, output = spawn.run(["sh", "-c", "cat; echo done"])
    assert (code, output) == (0, "done\n")


def test_a_missing_program_raises_and_leaks_no_descriptor() -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        spawn.run(["/nonexistent/vmsandbox-no-such-program"])
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_child_gets_only_its_three_descriptors(tmp_path: Path) -> None:
    """Even a descriptor made inheritable (as one received over a socket is) stays behind."""
    ours, theirs = socket.socketpair()
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_w, True)
    listing = tmp_path / "fds"
    try:
        code, _ = spawn.run([SH, "-c", f"ls /proc/self/fd > {listing}"])
    finally:
        for fd in (leaked_r, leaked_w):
            os.close(fd)
        ours.close()
        theirs.close()
    assert code == 0
    # 0, 1 and 2, plus the descriptor ls opens to list the directory
    assert len(listing.read_text().split()) == 4, listing.read_text()


def test_ignored_signals_are_restored_and_none_is_blocked() -> None:
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # as the interpreter set it
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        code, output = spawn.run(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert code == 0
    fields = dict(line.split(":\t") for line in output.splitlines())
    assert int(fields["SigBlk"], 16) == 0, "no signal is blocked in the child"
    ignored = int(fields["SigIgn"], 16)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), f"{signum} is at its default in the child"


def test_poll_then_wait_report_a_death_by_signal_once_reaped() -> None:
    null = spawn.open_null()
    try:
        child = spawn.spawn([SH, "-c", "kill -KILL $$"], null, null, null)
    finally:
        os.close(null)
    assert child.wait() == -signal.SIGKILL
    assert child.poll() == -signal.SIGKILL, "a reaped child keeps its code"


def test_descriptors_zero_to_two_stand_only_for_themselves() -> None:
    with pytest.raises(ValueError, match="0-2"):
        spawn.spawn([SH, "-c", "true"], 1, 1, 2)
