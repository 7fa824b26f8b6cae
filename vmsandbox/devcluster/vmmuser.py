"""The VMM user of ``vmsandbox dev``: created here (a development machine, never a real node),
used when it can reach the guest image and the agent's directories, else root, said so."""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

from vmsandbox.hypervisor.vmmuser import DEFAULT_USER, VmmUserError, resolve


def dev_vmm_user(paths: list[Path]) -> tuple[str, str]:
    """``(setting, why)``: the user for ``vmmUser``, and a line to print when it is root."""
    try:
        pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", DEFAULT_USER]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return "root", f"VMMs run as root: cannot create {DEFAULT_USER}: {done.stderr.strip()}"
    user = resolve(DEFAULT_USER)
    if user is None:
        return "root", f"VMMs run as root: {DEFAULT_USER} is uid 0"
    try:
        for path in paths:
            user.check_reachable(path)
    except VmmUserError as exc:
        return "root", f"VMMs run as root: {exc}"
    return user.name, ""
