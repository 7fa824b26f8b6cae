"""QEMU's command line for a sandbox NIC: the node's tap, opened by name, as virtio-net."""

from __future__ import annotations

from pathlib import Path

from vmsandbox.hypervisor.base import VMSpec
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.hypervisor.qemu.driver import VMPaths, qemu_argv


def _spec(tmp_path: Path, network: NetworkAttachment | None) -> VMSpec:
    return VMSpec(
        vm_id="vm1",
        state_dir=tmp_path,
        kernel=tmp_path / "vmlinuz",
        initramfs=tmp_path / "initramfs.img",
        root_disk=tmp_path / "rootfs.img",
        network=network,
    )


def test_tap_and_mac_on_the_command_line(tmp_path: Path) -> None:
    nic = NetworkAttachment(
        ip="10.250.7.9", gateway="10.250.7.1", mac="02:76:73:fa:07:09", tap="tsbaaaaaaaaaaaa"
    )
    argv = qemu_argv("qemu-system-x86_64", _spec(tmp_path, nic), "tcg", VMPaths(state_dir=tmp_path))
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "tap,id=net0,ifname=tsbaaaaaaaaaaaa,script=no,downscript=no"
    assert "virtio-net-pci,netdev=net0,mac=02:76:73:fa:07:09,id=nic0" in argv


def test_no_tap_no_nic(tmp_path: Path) -> None:
    for network in (None, NetworkAttachment()):
        argv = qemu_argv("qemu-system-x86_64", _spec(tmp_path, network), "tcg", VMPaths(state_dir=tmp_path))
        assert "-netdev" not in argv and not any("virtio-net" in a for a in argv)


def test_kernel_argument_names_address_gateway_and_resolvers() -> None:
    nic = NetworkAttachment(
        ip="10.250.7.9", prefix_length=24, gateway="10.250.7.1", dns=["10.0.0.53", "9.9.9.9"]
    )
    assert nic.kernel_arg() == "vmsandbox.net=10.250.7.9/24,10.250.7.1,10.0.0.53+9.9.9.9"
