"""Fixtures for real QEMU guests: the guest image, a short state root, and leak checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vmm_user import ensure_vmm_user, reachable_image
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.vmmuser import VmmUser

IMAGE_FILES = ("vmlinuz", "initramfs.img", "rootfs.img")
#: CI sets this: a missing QEMU or guest image is then a failure, not a skip.
REQUIRE_VM = os.environ.get("VMSANDBOX_REQUIRE_VM") == "1"


def unavailable(reason: str) -> None:
    if REQUIRE_VM:
        pytest.fail(f"VMSANDBOX_REQUIRE_VM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    binary = HypervisorConfig.load().qemu_binary
    if shutil.which(binary) is None:
        unavailable(f"{binary} is not installed (Debian: qemu-system-x86)")
    return binary


@pytest.fixture(scope="session")
def vmm_user() -> VmmUser:
    """The user QEMU runs as in these tests (created when missing)."""
    return ensure_vmm_user()


@pytest.fixture(scope="session")
def guest_image(qemu_binary: str, vmm_user: VmmUser) -> Path:
    """``$VMSANDBOX_GUEST_IMAGE_DIR`` when it holds an image, else one built into the cache
    (where the VMM user can reach it)."""
    configured = os.environ.get("VMSANDBOX_GUEST_IMAGE_DIR")
    if configured and all((Path(configured) / name).is_file() for name in IMAGE_FILES):
        return reachable_image(Path(configured), vmm_user)
    out = Path(configured) if configured else Path.home() / ".cache" / "vmsandbox" / "guest-image"
    builder = shutil.which("vmsandbox-guest-image")
    cmd = [builder] if builder else [sys.executable, "-m", "vmsandbox.guest.image.cli"]
    done = subprocess.run([*cmd, "build", "--out", str(out)], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not all((out / name).is_file() for name in IMAGE_FILES):
        unavailable(f"could not build the guest image into {out}: {done.stderr.strip()[-800:]}")
    return reachable_image(out, vmm_user)


@pytest.fixture
def state_root() -> Iterator[Path]:
    """A short directory (AF_UNIX paths are limited to 107 bytes) removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="vq", dir="/tmp"))
    root.chmod(0o711)  # the VMM user must reach its state directory below; it lists nothing here
    yield root
    shutil.rmtree(root, ignore_errors=True)
