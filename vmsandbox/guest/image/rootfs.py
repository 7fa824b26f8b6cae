"""The guest root filesystem: a trimmed Debian tree with python3, crun, runc and the guest agent.

The tree is bootstrapped with ``mmdebstrap`` and written into an ext4 image with ``mkfs.ext4 -d``,
so no loop device or mount on the host is involved. The guest mounts it read-only.
"""

from __future__ import annotations

import compileall
import importlib.util
import os
import py_compile
import shutil
import sys
import uuid
from pathlib import Path

from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.manifest import PackageVersion
from vmsandbox.guest.image.sources import AptSource
from vmsandbox.guest.image.steps import run

#: Installed on top of the ``essential`` set; busybox gives the agent (PID 1) ``poweroff``.
ROOTFS_PACKAGES: tuple[str, ...] = ("python3", "crun", "runc", "mount", "busybox-static")
#: Where the agent's package lives: on no site path, since the guest runs python3 -I -S and
#: puts only this directory on sys.path (see the initramfs's init.sh).
AGENT_PATH = "usr/lib/vmsandbox/python"

_MERGED_USR_HOOK = Path("/usr/share/mmdebstrap/hooks/maybe-merged-usr")

#: Never installed (dpkg filters them at unpack time), so they cost nothing to drop.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/bug/*",
)
#: Left behind by the bootstrap; useless in a read-only guest.
_TRIM = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/ldconfig/aux-cache",
    "var/log",
    "usr/share/doc-base",
    "usr/share/common-licenses",
    # glibc's iconv converters (8 MB): nothing in the guest converts charsets through iconv.
    "usr/lib/x86_64-linux-gnu/gconv",
)
#: The parts of the vmsandbox package the guest imports (it imports nothing else of vmsandbox).
_AGENT_FILES = ("__init__.py", "errors.py")
_AGENT_PACKAGES = ("guest",)
_NOT_FOR_GUEST = ("image", "__pycache__")


def bootstrap(
    tree: Path, suite: str, sources: list[AptSource], variant: str, packages: tuple[str, ...], timeout: float
) -> None:
    argv: list[str | Path] = [
        "mmdebstrap",
        f"--variant={variant}",
        "--format=directory",
        # No /proc, /sys or /dev mounts inside the tree: nothing can be left mounted, and the
        # build also works where mounting is not allowed (container image builds).
        "--skip=chroot/mount",
        "--include=" + ",".join(packages),
        '--aptopt=Acquire::Languages "none"',
    ]
    argv += [f"--dpkgopt={option}" for option in _DPKG_EXCLUDES]
    if _MERGED_USR_HOOK.is_dir():
        # Without it bookworm pulls in usrmerge and with it all of perl (~50 MB).
        argv.append(f"--hook-dir={_MERGED_USR_HOOK}")
    argv += [suite, tree]
    for source in sources:
        argv += source.one_line()
    run("mmdebstrap", argv, timeout=timeout)


def trim(tree: Path) -> None:
    for relative in _TRIM:
        path = tree / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            path.mkdir()
        elif path.exists():
            path.unlink()


def python_version(packages: list[PackageVersion]) -> str:
    """``3.11`` from the tree's ``python3`` package version, for picking matching wheels."""
    for package in packages:
        if package.name == "python3":
            major, minor = package.version.split(".")[:2]
            return f"{major}.{minor}"
    raise GuestImageError("the root filesystem has no python3 package", step="python-wheels")


def site_packages(tree: Path, version: str) -> Path:
    """Debian's python3 searches ``/usr/local/lib/python3.X/dist-packages`` first."""
    return tree / f"usr/local/lib/python{version}/dist-packages"


def install_wheels(tree: Path, version: str, requirements: list[str], timeout: float) -> list[PackageVersion]:
    """Install binary wheels for the guest's interpreter (not the host's) from PyPI, if any are asked for."""
    if not requirements:
        return []
    target = site_packages(tree, version)
    target.mkdir(parents=True, exist_ok=True)
    tag = version.replace(".", "")
    run(
        "python-wheels",
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--only-binary=:all:",
            "--platform=manylinux2014_x86_64",
            f"--python-version={version}",
            "--implementation=cp",
            f"--abi=cp{tag}",
            f"--target={target}",
            *requirements,
        ],
        timeout=timeout,
    )
    shutil.rmtree(target / "bin", ignore_errors=True)
    installed = []
    for dist_info in sorted(target.glob("*.dist-info")):
        name, _, rest = dist_info.name.removesuffix(".dist-info").partition("-")
        installed.append(PackageVersion(name=name, version=rest))
    return installed


def install_agent(tree: Path, package_root: Path) -> None:
    """Copy the guest agent's sources into the tree (init.sh starts it as the new root's PID 1)."""
    target = tree / AGENT_PATH / "vmsandbox"
    target.mkdir(parents=True, exist_ok=True)
    for name in _AGENT_FILES:
        shutil.copy2(package_root / name, target / name)
    for name in _AGENT_PACKAGES:
        shutil.copytree(
            package_root / name,
            target / name,
            ignore=lambda directory, names: [n for n in names if n in _NOT_FOR_GUEST or n.endswith(".pyc")],
        )


def bytecode_tag(version: str) -> str:
    """What :func:`precompile` will write for a guest running Python ``version``: part of the cache key."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != version:
        return "none"
    return f"cpython-{version}-{importlib.util.MAGIC_NUMBER.hex()}-unchecked-hash"


def precompile(tree: Path, version: str) -> None:
    """Byte-compile the agent, the standard library and any wheels into the read-only image.

    Without it each boot would compile the agent's imports again, into the tmpfs overlay, on the
    agent's start path. Unchecked-hash pycs are never compared with their source at import.
    Only done when the host interpreter is the guest's version (same bytecode format); the cache
    key records whether it was (:func:`bytecode_tag`).
    """
    if bytecode_tag(version) == "none":
        return
    directories = [tree / AGENT_PATH, tree / f"usr/lib/python{version}", site_packages(tree, version)]
    for directory in directories:
        if not directory.is_dir():
            continue
        ok = compileall.compile_dir(
            directory,
            quiet=1,
            workers=0,
            ddir=f"/{directory.relative_to(tree)}",
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        if not ok:
            raise GuestImageError(f"byte-compiling {directory.relative_to(tree)} failed", step="precompile")


def tree_usage(tree: Path, block: int = 4096) -> tuple[int, int]:
    """(bytes in whole blocks, inode count) of a tree, without following symlinks."""
    used, inodes = 0, 0
    for directory, dirnames, filenames in os.walk(tree):
        inodes += 1
        used += block
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(directory, d))]:
            info = os.lstat(os.path.join(directory, name))
            inodes += 1
            used += -(-info.st_size // block) * block
    return used, inodes


def make_ext4(tree: Path, image: Path, label: str, seed: str) -> None:
    """Size the image from the tree plus headroom for metadata, then ``mkfs.ext4 -d``."""
    used, inodes = tree_usage(tree)
    inode_count = inodes + inodes // 5 + 1024
    size = int(used * 1.03) + inode_count * 256 + 4 * 1024 * 1024
    size_mib = -(-size // (1024 * 1024))
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmsandbox-guest-rootfs:{seed}"))
    run(
        "mkfs.ext4",
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-I",
            "256",
            "-N",
            str(inode_count),
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-L",
            label,
            "-U",
            fs_uuid,
            "-E",
            f"root_owner=0:0,hash_seed={fs_uuid}",
            "-d",
            tree,
            image,
            f"{size_mib}M",
        ],
    )
