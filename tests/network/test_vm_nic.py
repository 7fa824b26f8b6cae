"""QEMU's command line for a sandbox NIC: the node's tap, opened by name, as virtio-net."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from tests.network.conftest import require_network_tools, sh
from vmsandbox.hypervisor.base import VMSpec
from vmsandbox.hypervisor.cloud_hypervisor import vmm_process
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


def test_vmm_starts_where_the_tap_is(tmp_path: Path) -> None:
    """With the plumbing in another namespace (``networkNamespace``), the VMM must run there: it
    opens the tap by name, and elsewhere would make a new, unconnected tap of its own."""
    nic = NetworkAttachment(
        ip="10.250.7.9", gateway="10.250.7.1", mac="02:76:73:fa:07:09", tap="tsbbbbbbbbbbbbb"
    )
    here = qemu_argv("qemu-system-x86_64", _spec(tmp_path, nic), "tcg", VMPaths(state_dir=tmp_path))
    assert here[0] == "qemu-system-x86_64"
    nic.tap_netns = Path("/run/netns/vtn-node")
    there = qemu_argv("qemu-system-x86_64", _spec(tmp_path, nic), "tcg", VMPaths(state_dir=tmp_path))
    assert there[:3] == ["nsenter", "--net=/run/netns/vtn-node", "qemu-system-x86_64"]
    assert there[3:] == here[1:]


def test_cloud_hypervisor_vmm_runs_in_the_taps_namespace(tmp_path: Path) -> None:
    require_network_tools()
    name = f"vtn-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    fake = tmp_path / "vmm"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    child = None
    try:
        child = vmm_process.launch(
            str(fake), [], tmp_path / "api.sock", tmp_path / "vmm.log", netns=Path(f"/run/netns/{name}")
        )
        expected = f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{child.pid}/ns/net") != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.readlink(f"/proc/{child.pid}/ns/net") == expected
    finally:
        if child is not None:
            vmm_process.kill(child.pid, child)
        sh("ip", "netns", "del", name)


def test_kernel_arguments_add_the_ipv6_address_and_gateway() -> None:
    nic = NetworkAttachment(
        ip="10.250.7.9",
        gateway="10.250.7.1",
        dns=["10.0.0.53"],
        ip6="fd76:7362:afa:700::9",
        gateway6="fd76:7362:afa:700::1",
    )
    assert nic.kernel_args() == [
        "vmsandbox.net=10.250.7.9/24,10.250.7.1,10.0.0.53",
        "vmsandbox.net6=fd76:7362:afa:700::9/64,fd76:7362:afa:700::1",
    ]
    assert NetworkAttachment(ip="10.250.7.9", gateway="10.250.7.1").kernel_args() == [
        "vmsandbox.net=10.250.7.9/24,10.250.7.1,"
    ], "IPv4 only: the guest turns IPv6 off"
    assert NetworkAttachment().kernel_args() == [], "mode none: no NIC, nothing to configure"
