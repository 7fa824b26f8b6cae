"""The VMM user setting: what each value resolves to, and the refusals that name it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.vmm_user import ensure_vmm_user
from vmsandbox.hypervisor import vmmuser
from vmsandbox.hypervisor.vmmuser import VmmUser, VmmUserError, resolve


def test_root_and_uid_gid_and_names_resolve() -> None:
    user = ensure_vmm_user()
    assert resolve("root") is None and resolve("0:0") is None
    assert resolve("") == resolve(user.name) == user
    numeric = resolve(f"{user.uid}:{user.gid}")
    assert numeric is not None and (numeric.uid, numeric.gid) == (user.uid, user.gid)


@pytest.mark.parametrize("setting", ["0:5", "nobody-such-user", "x:1", "1:"])
def test_bad_settings_are_refused_naming_the_setting(setting: str) -> None:
    with pytest.raises(VmmUserError) as info:
        resolve(setting)
    assert "vmmUser" in str(info.value)


def test_the_prefix_drops_privileges_before_the_program() -> None:
    prefix = VmmUser(999, 995, "u", kvm_gid=108).prefix()
    assert prefix[0] == "setpriv" and prefix[-1] == "--"
    assert {"--reuid=999", "--regid=995", "--groups=995,108", "--no-new-privs", "--inh-caps=-all"} <= set(
        prefix
    )


@pytest.mark.parametrize(
    ("mode", "group", "allowed"), [(0o600, None, False), (0o666, None, True), (0o660, 108, True)]
)
def test_kvm_without_access_for_the_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int, group: int | None, allowed: bool
) -> None:
    device = tmp_path / "kvm"
    device.touch()
    os.chmod(device, mode)
    monkeypatch.setattr(vmmuser, "KVM", device)
    user = VmmUser(999, 995, "u", kvm_gid=group)
    if allowed:
        user.check_kvm()
    else:
        with pytest.raises(VmmUserError, match=r"/dev/kvm.*vmmUser"):
            user.check_kvm()


def test_read_only_files_get_the_users_group_and_never_write_access(tmp_path: Path) -> None:
    user = ensure_vmm_user()
    private = tmp_path / "disk.img"
    private.write_bytes(b"x")
    os.chmod(private, 0o620)
    user.readable(private)
    info = private.stat()
    assert info.st_gid == user.gid and info.st_uid == 0
    assert info.st_mode & 0o777 == 0o640
