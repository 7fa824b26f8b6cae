"""Bounded logs: a container's output and its VM's serial console never grow without limit.

A log ``path`` is kept as at most ``max_files`` files: ``path`` (being written) and ``path.1``
... ``path.<max_files - 1>`` (older). The relay writes the container log itself and rotates it
by renaming. The serial log is written by the VMM, which holds it open, so it is rotated by
copying it aside and truncating it (the VMM writes it in append mode where it can).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 2


class LogLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)
    max_files: int = Field(default=DEFAULT_MAX_FILES, ge=1)


def rotated(path: Path, index: int) -> Path:
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


def log_files(path: Path, limits: LogLimits | None = None) -> list[Path]:
    """The existing files of the log ``path``, oldest first."""
    most = (limits or LogLimits()).max_files
    found = [rotated(path, i) for i in range(most + 8)]
    return [p for p in reversed(found) if p.is_file()]


def _shift(path: Path, limits: LogLimits) -> None:
    """Make room for a new ``path.1``: drop the oldest, move each one up."""
    rotated(path, limits.max_files - 1).unlink(missing_ok=True)
    for index in range(limits.max_files - 2, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.rename(rotated(path, index), rotated(path, index + 1))


class RotatingLog:
    """An append-only log the caller owns, rotated by rename when a write would pass the limit."""

    def __init__(self, path: Path, limits: LogLimits) -> None:
        self.path = path
        self.limits = limits
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        self._size = os.fstat(self._file.fileno()).st_size

    def write(self, data: bytes) -> None:
        """Append ``data``, splitting it across files so that none exceeds ``max_bytes``."""
        view = memoryview(data)
        while view:
            room = self.limits.max_bytes - self._size
            if room <= 0:
                self._rotate()
                continue
            part = view[:room]
            self._file.write(part)
            self._size += len(part)
            view = view[len(part) :]

    def _rotate(self) -> None:
        self._file.close()
        if self.limits.max_files > 1:
            _shift(self.path, self.limits)
            os.rename(self.path, rotated(self.path, 1))
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self._size = 0

    def close(self) -> None:
        self._file.close()


def rotate_foreign(path: Path, limits: LogLimits) -> bool:
    """Rotate a log another process keeps open (copy, then truncate in place); True if it did."""
    try:
        if path.stat().st_size <= limits.max_bytes:
            return False
    except OSError:
        return False
    if limits.max_files > 1:
        _shift(path, limits)
        shutil.copyfile(path, rotated(path, 1))
    os.truncate(path, 0)
    return True
