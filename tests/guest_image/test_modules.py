"""Module resolution against a modules.dep laid out like the Debian cloud kernel's."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsandbox.guest.image import initramfs
from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.modules import (
    GUEST_MODULES,
    VIRTIO_CONSOLE,
    VIRTIO_RNG,
    VIRTIO_VSOCK,
    module_name,
    resolve,
)

# Same shape as depmod's output: each line lists the module's full dependency closure.
# '@/' stands for kernel/drivers/virtio/ to keep lines short.
MODULES_DEP = """\
@/virtio.ko:
@/virtio_ring.ko:
@/virtio_pci_legacy_dev.ko:
@/virtio_pci_modern_dev.ko:
@/virtio_pci.ko: @/virtio_pci_legacy_dev.ko \
@/virtio_pci_modern_dev.ko @/virtio.ko @/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: @/virtio.ko @/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: @/virtio.ko @/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: @/virtio.ko @/virtio_ring.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: \
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko \
@/virtio.ko @/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
@/virtio.ko @/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/lib/loop_a.ko: kernel/lib/loop_b.ko
kernel/lib/loop_b.ko: kernel/lib/loop_a.ko
kernel/lib/needs_missing.ko: kernel/lib/not_there.ko
""".replace("@/", "kernel/drivers/virtio/")

MODULES_BUILTIN = """\
kernel/fs/ext4/ext4.ko
kernel/fs/jbd2/jbd2.ko
kernel/drivers/tty/serial/8250/8250.ko
"""


def _assert_dependencies_first(order: list[str]) -> None:
    table = {line.split(":")[0]: line.split(":")[1].split() for line in MODULES_DEP.splitlines()}
    for index, path in enumerate(order):
        for dep in table[path]:
            assert dep in order[:index], f"{path} is loaded before its dependency {dep}"


def test_guest_modules_resolve_with_dependencies_first_and_builtins_skipped() -> None:
    plan = resolve(GUEST_MODULES, MODULES_DEP, MODULES_BUILTIN)

    assert plan.builtin == ["ext4"]
    assert len(plan.load_order) == len(set(plan.load_order)), "a module would be loaded twice"
    _assert_dependencies_first(plan.load_order)
    assert set(plan.names) == {
        "virtio",
        "virtio_ring",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "virtio_blk",
        "virtio_console",
        "virtio_rng",
        "vsock",
        "vmw_vsock_virtio_transport_common",
        "vmw_vsock_virtio_transport",
        "overlay",
        "virtio_net",
        "net_failover",
        "failover",
    }
    # Nothing the guest did not ask for comes along.
    assert not {"loop_a", "loop_b", "needs_missing"} & set(plan.names)


def test_dash_and_underscore_name_the_same_module() -> None:
    plan = resolve(["virtio-rng"], MODULES_DEP, MODULES_BUILTIN)
    assert plan.load_order[-1] == "kernel/drivers/char/hw_random/virtio-rng.ko"
    assert plan.names[-1] == "virtio_rng"
    assert module_name("kernel/x/vmw_vsock_virtio_transport.ko.xz") == "vmw_vsock_virtio_transport"


def test_transitive_dependency_order() -> None:
    plan = resolve(["virtio_net"], MODULES_DEP, MODULES_BUILTIN)
    assert plan.names.index("failover") < plan.names.index("net_failover") < plan.names.index("virtio_net")
    _assert_dependencies_first(plan.load_order)


def test_unknown_module_names_itself() -> None:
    with pytest.raises(GuestImageError) as info:
        resolve(["virtio_pci", "no_such_module"], MODULES_DEP, MODULES_BUILTIN)
    assert info.value.step == "kernel-modules"
    assert "'no_such_module'" in str(info.value)
    assert str(info.value).startswith("step 'kernel-modules' failed:")


def test_missing_dependency_names_who_needs_it() -> None:
    with pytest.raises(GuestImageError, match=r"'not_there' \(needed by needs_missing\)"):
        resolve(["needs_missing"], MODULES_DEP, MODULES_BUILTIN)


def test_dependency_cycle_is_an_error_not_a_hang() -> None:
    with pytest.raises(GuestImageError, match="cycle"):
        resolve(["loop_a"], MODULES_DEP, MODULES_BUILTIN)


def test_malformed_modules_dep_line() -> None:
    with pytest.raises(GuestImageError, match="line 2"):
        resolve(["vsock"], "kernel/a.ko:\nkernel/b.ko kernel/a.ko\n", "")


def test_a_devices_driver_and_what_only_it_needs_load_only_with_that_device() -> None:
    plan = resolve(GUEST_MODULES, MODULES_DEP, MODULES_BUILTIN)
    names = {module_name(path): devices for path, devices in plan.only_with.items()}
    assert names == {
        "virtio_console": [VIRTIO_CONSOLE],
        "virtio_rng": [VIRTIO_RNG],
        "vsock": [VIRTIO_VSOCK],
        "vmw_vsock_virtio_transport_common": [VIRTIO_VSOCK],
        "vmw_vsock_virtio_transport": [VIRTIO_VSOCK],
    }
    # virtio and virtio_ring serve the drivers that always load; the NIC may be hot-plugged.
    assert set(plan.only_with) < set(plan.load_order)


def test_a_dependency_shared_by_two_devices_drivers_loads_with_either() -> None:
    plan = resolve(["virtio_console", "virtio_rng"], MODULES_DEP, MODULES_BUILTIN)
    shared = "kernel/drivers/virtio/virtio_ring.ko"
    assert plan.only_with[shared] == sorted([VIRTIO_CONSOLE, VIRTIO_RNG])


def test_the_initramfs_lists_each_devices_modules_with_its_device_types(tmp_path: Path) -> None:
    plan = resolve(GUEST_MODULES, MODULES_DEP, MODULES_BUILTIN)
    for path in plan.load_order:
        (tmp_path / "mods" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mods" / path).write_bytes(b"ko")
    (tmp_path / "bb" / "bin").mkdir(parents=True)
    (tmp_path / "bb" / "bin" / "busybox").write_bytes(b"bb")
    members = initramfs.entries(tmp_path / "bb" / "bin" / "busybox", tmp_path / "mods", "r", plan)
    listed = next(m for m in members if m.path == initramfs.MODULE_LIST).data.decode().splitlines()
    by_name = {module_name(line.split()[0]): line.split()[1:] for line in listed}
    assert by_name["vmw_vsock_virtio_transport"] == [str(VIRTIO_VSOCK)]
    assert by_name["virtio_console"] == [str(VIRTIO_CONSOLE)]
    assert by_name["virtio_rng"] == [str(VIRTIO_RNG)]
    assert by_name["virtio_ring"] == [] and by_name["virtio_net"] == [] and by_name["overlay"] == []
    assert [module_name(line.split()[0]) for line in listed] == plan.names
