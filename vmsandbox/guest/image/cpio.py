"""A newc (``070701``) cpio writer, the format the kernel unpacks an initramfs from.

Written here rather than driving ``cpio`` so that entries carry uid 0, device nodes such as
``/dev/console`` can be included without ``mknod`` (no root needed), and the archive is
byte-for-byte reproducible (fixed mtimes, sorted input, gzip without a timestamp).
"""

from __future__ import annotations

import gzip
import stat
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class Entry(BaseModel):
    """One archive member; ``path`` is relative to the initramfs root, without a leading slash."""

    model_config = ConfigDict(extra="forbid")

    path: str
    kind: int = Field(description="stat.S_IFREG, S_IFDIR, S_IFLNK or S_IFCHR")
    mode: int = 0o644
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(path=path, kind=stat.S_IFDIR, mode=mode)


def regular(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(path=path, kind=stat.S_IFREG, mode=mode, data=data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path=path, kind=stat.S_IFLNK, mode=0o777, data=target.encode())


def char_device(path: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(path=path, kind=stat.S_IFCHR, mode=mode, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _write_entry(out: BinaryIO, ino: int, entry: Entry) -> None:
    name = entry.path.encode() + b"\0"
    fields = (
        ino,
        entry.kind | (entry.mode & 0o7777),
        0,  # uid
        0,  # gid
        2 if entry.kind == stat.S_IFDIR else 1,
        0,  # mtime
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,  # check
    )
    header = _MAGIC + b"".join(b"%08x" % value for value in fields)
    out.write(header + name + _pad(len(header) + len(name)))
    out.write(entry.data + _pad(len(entry.data)))


def write_newc(out: BinaryIO, entries: list[Entry]) -> None:
    """Write entries in order; callers list each directory before what it contains."""
    for ino, entry in enumerate(entries, start=1):
        _write_entry(out, ino, entry)
    _write_entry(out, 0, Entry(path=_TRAILER, kind=0, mode=0))


def write_gzipped(path: Path, entries: list[Entry]) -> None:
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as out,
    ):
        write_newc(out, entries)  # type: ignore[arg-type]


def tree_entries(root: Path, prefix: str) -> list[Entry]:
    """Directories, files and symlinks under ``root``, parents first, placed under ``prefix``."""
    entries: list[Entry] = []
    for path in sorted(root.rglob("*")):
        relative = f"{prefix}/{path.relative_to(root).as_posix()}"
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            entries.append(symlink(relative, str(path.readlink())))
        elif stat.S_ISDIR(info.st_mode):
            entries.append(directory(relative, info.st_mode & 0o7777))
        elif stat.S_ISREG(info.st_mode):
            entries.append(regular(relative, path.read_bytes(), info.st_mode & 0o7777))
    return entries
