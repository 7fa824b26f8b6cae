"""Running ``ip`` and ``nft``: one place that turns a failed command into a :class:`NetworkError`."""

from __future__ import annotations

import subprocess

from vmsandbox.node_agent.network.errors import NetworkError


def run(argv: list[str], *, stdin: str | None = None, step: str = "network") -> str:
    """Run one command; its stderr becomes the error's detail."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{argv[0]}: {exc}", step=step) from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise NetworkError(f"{' '.join(argv[:6])}: {detail}", step=step)
    return done.stdout


def succeeds(argv: list[str]) -> bool:
    """Whether a probing command (does this link exist?) exits 0."""
    try:
        return subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
