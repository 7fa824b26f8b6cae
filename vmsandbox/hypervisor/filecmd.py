"""External commands that write one file (a disk copy, a fresh filesystem image)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run_writing(cmd: list[str], target: Path) -> str | None:
    """Run ``cmd``, which writes ``target``; when it fails, remove what it left (a half-written
    image must never be taken for a good one) and return its stderr. None when it succeeded."""
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return None
    target.unlink(missing_ok=True)
    return result.stderr.strip()
