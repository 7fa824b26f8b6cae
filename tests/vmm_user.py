"""The VMM user in tests: created (``useradd --system``) when missing, as ``vmsandbox dev`` does,
and a guest image it can reach (a home directory above the cached image may be private)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from vmsandbox.hypervisor.vmmuser import DEFAULT_USER, VmmUser, VmmUserError, resolve


def ensure_vmm_user() -> VmmUser:
    """The default VMM user, created here when this test machine has none."""
    try:
        pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", DEFAULT_USER]
        subprocess.run(cmd, check=True, capture_output=True)
    user = resolve("")
    assert user is not None
    return user


def reachable_image(image: Path, user: VmmUser) -> Path:
    """``image`` when the VMM user can reach its files, else a hard-linked (or copied) twin in /tmp."""
    try:
        user.check_reachable(image / "vmlinuz")
        return image
    except VmmUserError:
        pass
    twin = Path("/tmp") / f"vmsandbox-guest-{os.getuid()}"
    twin.mkdir(mode=0o755, exist_ok=True)
    for entry in image.iterdir():
        target = twin / entry.name
        if target.exists() and target.stat().st_mtime >= entry.stat().st_mtime:
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(entry, target)
        except OSError:
            shutil.copy2(entry, target)
    return twin
