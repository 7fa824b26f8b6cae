"""Rotation of bounded logs, kept free of heavy imports: the relay process loads it at start-up.

See :mod:`vmsandbox.runtime.logfiles` for the scheme; ``limits`` is anything with ``max_bytes``
and ``max_files`` (a :class:`~vmsandbox.runtime.logfiles.LogLimits`, or the relay's copy).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Protocol


class Limits(Protocol):
    @property
    def max_bytes(self) -> int: ...

    @property
    def max_files(self) -> int: ...


def rotated(path: Path, index: int) -> Path:
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


def _shift(path: Path, limits: Limits) -> None:
    """Make room for a new ``path.1``: drop the oldest, move each one up."""
    rotated(path, limits.max_files - 1).unlink(missing_ok=True)
    for index in range(limits.max_files - 2, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.rename(rotated(path, index), rotated(path, index + 1))


class RotatingLog:
    """An append-only log the caller owns, rotated by rename when a write would pass the limit."""

    def __init__(self, path: Path, limits: Limits) -> None:
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


def rotate_foreign(path: Path, limits: Limits) -> bool:
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
