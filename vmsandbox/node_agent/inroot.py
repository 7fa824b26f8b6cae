"""Reading a file of an unpacked image as root without letting the image choose a host path.

An image's ``/etc/passwd`` may be a symlink to ``/etc/shadow``, or its ``/etc`` a symlink to
``/``; the path is therefore resolved one component at a time under a directory descriptor of
the root filesystem, with ``O_NOFOLLOW``, as ``openat2(RESOLVE_IN_ROOT)`` would: symlinks are
followed but re-rooted at the image's root, and ``..`` never climbs above it. Only a regular
file is read, and no more than a cap, so a FIFO, a device or a huge file cannot stall the agent
or exhaust its memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from vmsandbox.node_agent.errors import ImageInvalid

#: Files the agent reads from images are small tables; anything bigger is refused.
MAX_FILE_BYTES = 1024 * 1024
#: As the kernel's MAXSYMLINKS.
MAX_SYMLINKS = 40
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _invalid(path: str, why: str) -> ImageInvalid:
    return ImageInvalid(f"{path} in the image {why}", step=f"image file {path}")


class _Walk:
    """Descriptors of the directories from the root down to the current one."""

    def __init__(self, root_fd: int) -> None:
        self.stack = [root_fd]

    @property
    def fd(self) -> int:
        return self.stack[-1]

    def up(self) -> None:
        if len(self.stack) > 1:
            os.close(self.stack.pop())

    def to_root(self) -> None:
        while len(self.stack) > 1:
            os.close(self.stack.pop())

    def close(self) -> None:
        for fd in self.stack[1:]:
            os.close(fd)
        self.stack[1:] = []


def _resolve(walk: _Walk, path: str) -> tuple[int, os.stat_result] | None:
    """An ``O_PATH`` descriptor of ``path`` in the root (not a symlink), or None if it is missing."""
    pending = [part for part in path.split("/") if part]
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            walk.up()
            continue
        try:
            fd = os.open(part, _PATH_FLAGS, dir_fd=walk.fd)
        except FileNotFoundError:
            return None
        info = os.fstat(fd)
        if stat.S_ISLNK(info.st_mode):
            links += 1
            try:
                target = os.readlink(part, dir_fd=walk.fd)
            finally:
                os.close(fd)
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links")
            if target.startswith("/"):
                walk.to_root()
            pending = [p for p in target.split("/") if p] + pending
            continue
        if not pending:
            return fd, info
        if not stat.S_ISDIR(info.st_mode):
            os.close(fd)
            raise OSError(errno.ENOTDIR, "a component of the path is not a directory")
        walk.stack.append(fd)
    return os.dup(walk.fd), os.fstat(walk.fd)


def read_in_root(rootfs: Path, path: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The content of ``path`` (absolute in the image) under ``rootfs``; None when it does not exist.

    Raises :class:`ImageInvalid` naming ``path`` when it is not a regular file or exceeds ``limit``.
    """
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    walk = _Walk(root_fd)
    try:
        try:
            found = _resolve(walk, path)
        except OSError as exc:
            raise _invalid(path, f"cannot be resolved: {exc.strerror or exc}") from None
        if found is None:
            return None
        fd, info = found
        with contextlib.ExitStack() as closing:
            closing.callback(os.close, fd)
            if not stat.S_ISREG(info.st_mode):
                raise _invalid(path, "is not a regular file")
            if info.st_size > limit:
                raise _invalid(path, f"is larger than {limit} bytes")
            # Reopen the very inode that was checked; O_NONBLOCK as a guard should it change.
            data_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            closing.callback(os.close, data_fd)
            again = os.fstat(data_fd)
            if (again.st_dev, again.st_ino) != (info.st_dev, info.st_ino) or not stat.S_ISREG(again.st_mode):
                raise _invalid(path, "changed while it was read")
            data = os.read(data_fd, limit + 1)
            chunks = [data]
            total = len(data)
            while data and total <= limit:
                data = os.read(data_fd, limit + 1 - total)
                chunks.append(data)
                total += len(data)
            if total > limit:
                raise _invalid(path, f"is larger than {limit} bytes")
            return b"".join(chunks)
    finally:
        walk.close()
        os.close(root_fd)
