"""Finding the apiextensions-apiserver and etcd binaries, building them once when missing."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

from vmsandbox.devcluster.errors import KubeBinariesUnavailable

#: A directory holding both binaries, used as is (no build).
BIN_DIR_ENV = "VMSANDBOX_KUBE_BIN_DIR"
#: Where build-apiserver.sh caches its builds (it reads the same variable).
CACHE_ENV = "VMSANDBOX_KUBE_CACHE"
BUILD_SCRIPT = Path(__file__).with_name("build-apiserver.sh")
BINARIES = ("apiextensions-apiserver", "etcd")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vmsandbox" / "kube"


def _complete(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in BINARIES)


def find_binaries(*, build: bool = True) -> Path:
    """The directory holding both binaries; runs the build script (serialised by a lock) when allowed."""
    override = os.environ.get(BIN_DIR_ENV)
    if override:
        if not _complete(Path(override)):
            raise KubeBinariesUnavailable(f"{BIN_DIR_ENV}={override} lacks {' or '.join(BINARIES)}")
        return Path(override)
    current = cache_dir() / "current"
    if _complete(current):
        return current.resolve()
    if not build:
        raise KubeBinariesUnavailable(f"not built yet (no binaries in {current}); run {BUILD_SCRIPT}")
    return _build(current)


def _build(current: Path) -> Path:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".build.lock").open("w") as lock:
        # Another process may be building: wait for it, then reuse its result.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(current):
            return current.resolve()
        log_path = cache / "build.log"
        with log_path.open("w") as log:
            result = subprocess.run(
                ["bash", str(BUILD_SCRIPT)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, CACHE_ENV: str(cache)},
                check=False,
            )
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise KubeBinariesUnavailable(f"{BUILD_SCRIPT.name} failed ({log_path}): " + " | ".join(tail))
    lines = result.stdout.strip().splitlines()
    built = Path(lines[-1]) if lines else current
    if not _complete(built):
        raise KubeBinariesUnavailable(f"{BUILD_SCRIPT.name} reported {built}, which lacks the binaries")
    return built.resolve()
