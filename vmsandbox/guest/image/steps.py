"""Running build steps so that any failure comes out as one error naming the step."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    """Run a command to completion and return its stdout; on failure the error quotes its stderr."""
    args = [str(arg) for arg in argv]
    log.debug("run %s", " ".join(args))
    try:
        done = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise GuestImageError(f"{args[0]} is not installed ({exc})", step=step_name) from exc
    except subprocess.TimeoutExpired as exc:
        raise GuestImageError(f"{args[0]} did not finish within {timeout:.0f}s", step=step_name) from exc
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip()).splitlines()[-_TAIL_LINES:]
        detail = "\n  ".join(output) if output else "(no output)"
        raise GuestImageError(f"{args[0]} exited with status {done.returncode}:\n  {detail}", step=step_name)
    return done.stdout
