"""Commands run by the builder: failures name the step and nothing outlives a step."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.steps import run, step


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_failure_quotes_the_command_and_its_stderr() -> None:
    with pytest.raises(GuestImageError) as info:
        run("mkfs.ext4", ["sh", "-c", "echo progress; echo 'disk full' >&2; exit 3"])
    assert str(info.value) == "step 'mkfs.ext4' failed: sh exited with status 3:\n  disk full"


def test_missing_tool_is_named() -> None:
    with pytest.raises(GuestImageError, match="no-such-tool-x is not installed") as info:
        run("kernel-download", ["no-such-tool-x"])
    assert info.value.step == "kernel-download"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    # The helper keeps stdout open, as mmdebstrap's forked helpers do, and ignores SIGTERM.
    script = f"sh -c 'trap \"\" TERM; sleep 300' & echo $! > {pid_file}; wait"
    started = time.monotonic()
    with pytest.raises(GuestImageError, match=r"sh did not finish within 1s") as info:
        run("mmdebstrap", ["sh", "-c", script], timeout=1)
    assert info.value.step == "mmdebstrap"
    assert time.monotonic() - started < 20
    helper = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(helper), "a helper of the timed-out command is still running"


def test_step_wraps_os_errors_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match=r"^step 'initramfs' failed: FileNotFoundError") as info:  # noqa: SIM117
        with step("initramfs"):
            (tmp_path / "absent").read_bytes()
    assert isinstance(info.value.__cause__, FileNotFoundError)
