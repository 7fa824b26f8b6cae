"""The unprivileged user a VMM runs as, and what it is given to open.

A VMM parses everything a guest sends it; running it as root would make any escape from the
guest an escape to root on the node. So QEMU and Cloud Hypervisor start already as this user
(``setpriv`` before the program, in the detached launcher: ``exec`` keeps the pid). QEMU's own
``-runas`` cannot be used: under its seccomp sandbox the setuid it makes is a denied call.

What a VMM opens is made reachable for it, never more: its own state directory is its own
(``chown``), per-VM writable disks are its own, shared read-only disks (kernel, initramfs,
rootfs, the disk cache's container disks) get the user's group with read access only, and a
VM's tap is created owned by the user so it can attach to it without ``CAP_NET_ADMIN``.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmsandbox.hypervisor.base import HypervisorError

if TYPE_CHECKING:
    from vmsandbox.hypervisor.config import HypervisorConfig

log = logging.getLogger(__name__)

#: The user a VMM runs as when the setting is empty and this user exists on the node.
DEFAULT_USER = "vmsandbox-vmm"
#: Names the setting in errors: the hypervisor config field, its variable, the agent's key.
SETTING = "vmm_user (VMSANDBOX_VMM_USER, agent config vmmUser)"
KVM = Path("/dev/kvm")


class VmmUserError(HypervisorError):
    step = "vmm user"


@dataclass(frozen=True)
class VmmUser:
    """A resolved VMM user: its uid, primary gid and the group of ``/dev/kvm`` when it has one."""

    uid: int
    gid: int
    name: str
    kvm_gid: int | None = None

    def prefix(self) -> list[str]:
        """``setpriv`` arguments that make the program that follows run as this user."""
        groups = [self.gid] if self.kvm_gid is None else [self.gid, self.kvm_gid]
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            f"--groups={','.join(str(g) for g in groups)}",
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
        ]

    def check_reachable(self, path: Path) -> None:
        """Refuse, naming the directory, when one above ``path`` is not searchable by this user
        (directories above a VM's files are the admin's: they are never changed here)."""
        groups = {self.gid} if self.kvm_gid is None else {self.gid, self.kvm_gid}
        for parent in path.absolute().parents:
            info = parent.stat()
            if info.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif info.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not info.st_mode & bit:
                raise VmmUserError(
                    f"the VMM user {self.name} cannot reach {path}: {parent} is not searchable for it "
                    f"(make it so, or change {SETTING})"
                )

    def check_kvm(self) -> None:
        """Refuse a KVM boot this user could not make: ``/dev/kvm`` neither in a group it joins
        nor open to all (falling back to TCG would silently drop the VM boundary)."""
        try:
            mode = stat.S_IMODE(KVM.stat().st_mode)
        except OSError as exc:
            raise VmmUserError(f"/dev/kvm: {exc}") from exc
        if self.kvm_gid is None and mode & 0o006 != 0o006:
            raise VmmUserError(
                f"the VMM user {self.name} cannot open /dev/kvm (mode {mode:o}, no group access): "
                f"give /dev/kvm a group with read-write access (e.g. kvm), or change {SETTING}"
            )

    def own(self, path: Path) -> None:
        """Make ``path`` this user's (a VM's own state directory or writable disk)."""
        os.chown(path, self.uid, self.gid)

    def readable(self, path: Path) -> None:
        """Let this user read ``path`` (never write it): world-readable files stay as they are,
        others get the user's group with read access, write bits for group and others removed."""
        info = path.stat()
        if info.st_mode & stat.S_IROTH or info.st_uid == self.uid:
            return
        os.chown(path, -1, self.gid)
        os.chmod(path, (stat.S_IMODE(info.st_mode) | stat.S_IRGRP) & ~(stat.S_IWGRP | stat.S_IWOTH))


def _kvm_gid() -> int | None:
    """The group of ``/dev/kvm`` when it is group-accessible, so the user may open it."""
    try:
        info = KVM.stat()
    except OSError:
        return None
    return info.st_gid if info.st_gid != 0 and info.st_mode & stat.S_IRWXG else None


def resolve(setting: str) -> VmmUser | None:
    """The user ``setting`` names (a name, or ``uid:gid``); None for root.

    Empty: ``vmsandbox-vmm`` when it exists, else root (logged). A name that does not exist is an
    error naming the setting, never a fallback to root."""
    value = setting.strip()
    if value in ("root", "0", "0:0"):
        return None
    if not value:
        try:
            entry = pwd.getpwnam(DEFAULT_USER)
        except KeyError:
            log.warning("no user %s on this node: VMMs run as root (set %s)", DEFAULT_USER, SETTING)
            return None
        return VmmUser(entry.pw_uid, entry.pw_gid, entry.pw_name, _kvm_gid())
    if ":" in value:
        uid, _, gid = value.partition(":")
        if not (uid.isdigit() and gid.isdigit()):
            raise VmmUserError(f"{SETTING}: {value!r} is neither a user name nor uid:gid")
        if int(uid) == 0:
            raise VmmUserError(f"{SETTING}: uid 0 is root; write 'root' to run VMMs as root")
        return VmmUser(int(uid), int(gid), value, _kvm_gid())
    try:
        entry = pwd.getpwnam(value)
    except KeyError:
        raise VmmUserError(f"{SETTING}: no user {value!r} on this node") from None
    if entry.pw_uid == 0:
        return None
    return VmmUser(entry.pw_uid, entry.pw_gid, entry.pw_name, _kvm_gid())


def give_access(user: VmmUser | None, state_dir: Path, disks: list[tuple[Path, bool]]) -> None:
    """Make a VM's state directory and disks (``(path, readonly)``) reachable for ``user``:
    the directory and writable disks become its own, read-only ones only readable."""
    if user is None:
        return
    for path in [state_dir, *(p for p, _ in disks)]:
        user.check_reachable(path)
    try:
        user.own(state_dir)
        for path, readonly in disks:
            if readonly:
                user.readable(path)
            else:
                user.own(path)
    except OSError as exc:
        raise VmmUserError(f"cannot give the VMM user {user.name} access: {exc}") from exc


class RunsAsVmmUser:
    """A driver whose VMM runs as the configured user."""

    config: HypervisorConfig

    @functools.cached_property
    def user(self) -> VmmUser | None:
        """The user the VMM runs as (resolved once: a missing user is an error naming the setting)."""
        return resolve(self.config.vmm_user)
