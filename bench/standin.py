"""This process set up to run its VMMs as the Cloud Hypervisor stand-in, in a scratch directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

STANDIN = Path(__file__).resolve().parents[1] / "tests" / "cloud_hypervisor" / "standin"


def use_standin(prefix: str) -> Path:
    """A fresh directory under /tmp, made this process's TMPDIR, with the stand-in first on PATH
    and its request log off (``CH_STANDIN_RECORD`` left set would write every request to a
    file). The caller removes the directory."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.environ["PATH"] = f"{STANDIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["TMPDIR"] = str(work)
    os.environ.pop("CH_STANDIN_RECORD", None)
    return work
