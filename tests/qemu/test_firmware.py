"""Which firmware QEMU boots with: the ``qemu_firmware`` setting, checked, and on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.qemu.test_driver import image_spec
from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.qemu import QemuDriver, firmware
from vmsandbox.hypervisor.qemu.driver import VMPaths, qemu_argv
from vmsandbox.hypervisor.qemu.firmware import firmware_for


def _argv(tmp_path: Path, bios: str) -> list[str]:
    spec = image_spec(tmp_path, tmp_path)
    return qemu_argv("qemu-system-x86_64", spec, "tcg", VMPaths(state_dir=tmp_path), bios)


def test_auto_is_qboot_where_qemu_ships_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rom = tmp_path / "qboot.rom"
    monkeypatch.setattr(firmware, "QBOOT", rom)
    assert firmware_for("auto") == "", "no qboot: QEMU's default firmware"
    rom.write_bytes(b"\0" * 64)
    assert firmware_for("auto") == str(rom)


def test_default_and_empty_are_qemus_own(tmp_path: Path) -> None:
    assert firmware_for("default") == ""
    assert firmware_for("") == "", "a snapshot from before the setting ran QEMU's default"


def test_a_path_must_be_an_absolute_existing_file(tmp_path: Path) -> None:
    rom = tmp_path / "bios.bin"
    rom.write_bytes(b"\0" * 64)
    assert firmware_for(str(rom)) == str(rom)
    for bad in ("bios.bin", str(tmp_path / "missing.bin"), str(tmp_path)):
        with pytest.raises(HypervisorError, match="qemu_firmware") as err:
            firmware_for(bad)
        assert err.value.step == "boot config"


def test_the_setting_defaults_to_auto_and_reads_its_variable() -> None:
    assert HypervisorConfig.load(environ={}).qemu_firmware == "auto"
    loaded = HypervisorConfig.load(environ={"VMSANDBOX_QEMU_FIRMWARE": "default"})
    assert loaded.qemu_firmware == "default"


def test_bios_on_the_command_line_only_when_named(tmp_path: Path) -> None:
    argv = _argv(tmp_path, "/usr/share/qemu/qboot.rom")
    assert argv[argv.index("-bios") + 1] == "/usr/share/qemu/qboot.rom"
    assert "-bios" not in _argv(tmp_path, "")


def test_a_bad_setting_refuses_the_boot_before_anything_is_made(tmp_path: Path) -> None:
    for name in ("vmlinuz", "initramfs.img", "rootfs.img"):
        (tmp_path / name).write_bytes(b"\0")
    state = tmp_path / "vm1"
    spec = image_spec(tmp_path, state)
    config = HypervisorConfig(qemu_accel="tcg", qemu_firmware="bios.bin", vmm_user="root")
    with pytest.raises(HypervisorError, match="qemu_firmware"):
        QemuDriver(config).boot(spec)
    assert not state.exists(), "nothing of the VM was made"
