"""The ``--pid-file``: written last, atomically, as bare decimal (go-runc parses it strictly)."""

from __future__ import annotations

import os
from pathlib import Path

from vmsandbox.runtime.errors import RuntimeError_


def write_pid_file(path: Path, pid: int) -> None:
    """Write ``pid`` to a hidden temporary file beside ``path`` and rename it into place."""
    path = Path(os.path.abspath(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, str(pid).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeError_(f"cannot write {path}: {exc.strerror or exc}", step="pid file") from exc
