"""Running build steps so that any failure comes out as one error naming the step."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from vmsandbox.guest.image.errors import GuestImageError

log = logging.getLogger("vmsandbox.guest.image")

_TAIL_LINES = 15


@contextmanager
def step(name: str) -> Iterator[None]:
    """Turn whatever goes wrong inside into a :class:`GuestImageError` for ``name``."""
    started = time.monotonic()
    log.info("step %s", name)
    try:
        yield
    except GuestImageError:
        raise
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise GuestImageError(f"{type(exc).__name__}: {exc}", step=name) from exc
    log.info("step %s done in %.1fs", name, time.monotonic() - started)


def run(
    step_name: str,
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> str:
    """Run a command to completion and return its stdout; on failure the error quotes its stderr.

    The command gets its own process group, and the whole group is killed if it overruns
    ``timeout`` or the build is interrupted: tools such as mmdebstrap fork helpers that would
    otherwise outlive it and keep its output pipes (and so this call) open.
    """
    args = [str(arg) for arg in argv]
    log.debug("run %s", " ".join(args))
    try:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise GuestImageError(f"{args[0]} is not installed ({exc})", step=step_name) from exc
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_group(process)
        raise GuestImageError(f"{args[0]} did not finish within {timeout:.0f}s", step=step_name) from exc
    except BaseException:
        _kill_group(process)
        raise
    if process.returncode != 0:
        output = (stderr.strip() or stdout.strip()).splitlines()[-_TAIL_LINES:]
        detail = "\n  ".join(output) if output else "(no output)"
        raise GuestImageError(
            f"{args[0]} exited with status {process.returncode}:\n  {detail}", step=step_name
        )
    return stdout


def _kill_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM the command's process group, then SIGKILL whatever ignored it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=5)
