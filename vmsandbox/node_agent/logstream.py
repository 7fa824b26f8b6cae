"""Streaming a sandbox's container log to a reader: in chunks, from an offset, and following it.

The log is the relay's rotated set (``container.log.1`` older, ``container.log`` current); it is
never read whole into memory. ``tail_bytes`` starts that many bytes before the end of the set;
``follow`` keeps reading what the relay appends (across a rotation) until the sandbox stops
running and nothing more comes, or the reader goes away.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from vmsandbox.runtime.logfiles import log_files

CHUNK = 64 * 1024
FOLLOW_POLL_SECONDS = 0.2

Write = Callable[[bytes], None]


def _start_points(files: list[Path], tail_bytes: int | None) -> list[tuple[Path, int]]:
    """(file, offset) pairs to read, oldest first, so that at most ``tail_bytes`` are sent."""
    sizes = []
    for path in files:
        try:
            sizes.append((path, path.stat().st_size))
        except OSError:
            continue
    if tail_bytes is None:
        return [(path, 0) for path, _ in sizes]
    left = tail_bytes
    picked: list[tuple[Path, int]] = []
    for path, size in reversed(sizes):
        if left <= 0:
            break
        picked.append((path, max(0, size - left)))
        left -= size
    return list(reversed(picked))


def _copy(fd: int, write: Write) -> int:
    """Send what ``fd`` holds from its offset on; the number of bytes sent."""
    sent = 0
    while chunk := os.read(fd, CHUNK):
        write(chunk)
        sent += len(chunk)
    return sent


class _Open:
    """The one log file being read; closed exactly once whatever happens."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def switch(self, path: Path, offset: int = 0) -> bool:
        try:
            new_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        self.close()
        self.fd = new_fd
        os.lseek(new_fd, offset, os.SEEK_SET)
        return True

    def identity(self) -> tuple[int, int] | None:
        if self.fd is None:
            return None
        info = os.fstat(self.fd)
        return info.st_ino, info.st_dev

    def copy(self, write: Write) -> int:
        return _copy(self.fd, write) if self.fd is not None else 0

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def stream_log(
    current: Path,
    write: Write,
    *,
    tail_bytes: int | None = None,
    follow: bool = False,
    running: Callable[[], bool] = lambda: False,
) -> None:
    reader = _Open()
    try:
        for path, offset in _start_points(log_files(current), tail_bytes):
            if reader.switch(path, offset):
                reader.copy(write)
        if follow:
            if reader.fd is None and tail_bytes is not None:
                with contextlib.suppress(OSError):
                    reader.switch(current, current.stat().st_size)
            _follow(current, reader, write, running)
    finally:
        reader.close()


def _follow(current: Path, reader: _Open, write: Write, running: Callable[[], bool]) -> None:
    """Read appended output until the sandbox stopped and one last read found nothing new."""
    last_round = False
    while True:
        try:
            info = os.stat(current)
        except OSError:
            info = None
        if info is not None and (info.st_ino, info.st_dev) != reader.identity():
            reader.copy(write)  # rotated: finish the old file, then start the new one at 0
            reader.switch(current)
        sent = reader.copy(write)
        if last_round and not sent:
            return
        last_round = not running()
        if not sent and not last_round:
            time.sleep(FOLLOW_POLL_SECONDS)
