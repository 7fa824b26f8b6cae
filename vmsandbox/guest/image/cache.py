"""The build cache: one directory per input set, keyed by a digest of everything that went in.

Inputs are the exact package versions apt would fetch now, the wheels' versions, the options,
and the source of both this builder and the guest agent it copies into the image; changing any
of them gives a new key and so a rebuild. Entries appear only complete (built in a scratch
directory inside the cache and renamed into place).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.fsutil import remove_tree
from vmsandbox.guest.image.manifest import Manifest, PackageVersion

DEFAULT_CACHE = Path("~/.cache/vmsandbox/guest")
SCRATCH_PREFIX = "tmp-"
ENTRY_PREFIX = "image-"
#: Complete entries kept besides the newest, so switching between two inputs sets stays cheap.
KEEP_ENTRIES = 2


class BuildInputs(BaseModel):
    """Everything the artifacts depend on; its digest is the cache key."""

    model_config = ConfigDict(extra="forbid")

    builder_format: int = 1
    suite: str
    sources: list[str]
    kernel: PackageVersion
    busybox: PackageVersion
    variant: str
    rootfs_packages: list[PackageVersion]
    python_requirements: list[str]
    modules: list[str]
    builder_sha256: str
    agent_sha256: str
    #: The bytecode format compiled into the image ("none" when the builder could not).
    bytecode: str = "none"

    def key(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def source_digest(root: Path, *, include: tuple[str, ...], exclude_dirs: tuple[str, ...] = ()) -> str:
    """Digest of file names and contents under ``root`` (``include`` names files or directories)."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for name in include:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for found in path.rglob("*"):
                relative = found.relative_to(root).parts
                skipped = any(part in exclude_dirs for part in relative[:-1])
                if found.is_file() and not skipped and found.suffix not in (".pyc", ".pyo"):
                    files.append(found)
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


class Cache:
    """A cache directory: complete entries ``image-<key>/`` and scratch ``tmp-*`` dirs."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()

    def entry(self, key: str) -> Path:
        return self.root / f"{ENTRY_PREFIX}{key}"

    def lookup(self, key: str) -> Manifest | None:
        """A complete, intact entry for ``key``, or None (a damaged one is removed)."""
        directory = self.entry(key)
        if not directory.is_dir():
            return None
        try:
            manifest = Manifest.load(directory)
            if manifest.cache_key != key:
                raise GuestImageError(f"{directory} holds key {manifest.cache_key}", step="cache")
            manifest.verify(directory)
        except GuestImageError:
            remove_tree(directory)
            return None
        return manifest

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise builders sharing this cache; stale scratch dirs are then safe to delete."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / ".lock", "w")  # noqa: SIM115 - held for the whole block
        except OSError as exc:
            raise GuestImageError(f"cannot use cache directory {self.root}: {exc}", step="cache") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            for stale in self.root.glob(f"{SCRATCH_PREFIX}*"):
                remove_tree(stale)
            yield

    def commit(self, scratch_output: Path, key: str) -> Path:
        """Rename a finished output directory into place as the entry for ``key``."""
        target = self.entry(key)
        if target.exists():
            remove_tree(target)
        os.rename(scratch_output, target)
        self.prune(keep=target)
        return target

    def prune(self, keep: Path) -> None:
        entries = sorted(
            (p for p in self.root.glob(f"{ENTRY_PREFIX}*") if p != keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in entries[KEEP_ENTRIES - 1 :]:
            remove_tree(old)
