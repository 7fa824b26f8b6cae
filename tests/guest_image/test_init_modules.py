"""init.sh's choice of modules: a device's driver only when the VM has that device.

The functions are cut from the packaged ``init.sh`` and run by busybox's shell, as in the guest,
against a PCI device tree made here and a ``modprobe`` that records what it was asked for.
"""

from __future__ import annotations

import re
import subprocess
from importlib import resources
from pathlib import Path

from tests.tools import assert_shellcheck_clean, require_tools

FUNCTIONS = ("find_virtio_devices", "has_virtio_device", "load_modules")
LIST = """\
/lib/modules/r/kernel/drivers/virtio/virtio.ko
/lib/modules/r/kernel/drivers/virtio/virtio_pci.ko
/lib/modules/r/kernel/drivers/char/virtio_console.ko 3
/lib/modules/r/kernel/net/vmw_vsock/vsock.ko 19
/lib/modules/r/kernel/drivers/char/hw_random/virtio-rng.ko 4
/lib/modules/r/kernel/drivers/virtio/shared.ko 3,19
/lib/modules/r/kernel/drivers/net/virtio_net.ko
"""


def _function(script: str, name: str) -> str:
    found = re.search(rf"^{name}\(\) {{\n.*?^}}\n", script, re.MULTILINE | re.DOTALL)
    assert found, f"init.sh has no function {name}"
    return found.group(0)


def _pci_device(root: Path, slot: str, vendor: str, device: str, subsystem: str = "0x1100") -> None:
    path = root / slot
    path.mkdir(parents=True)
    (path / "vendor").write_text(f"{vendor}\n")
    (path / "device").write_text(f"{device}\n")
    (path / "subsystem_device").write_text(f"{subsystem}\n")


def _loaded(tmp_path: Path, devices: Path) -> list[str]:
    require_tools("busybox")
    script = resources.files("vmsandbox.guest.image").joinpath("init.sh").read_text()
    (tmp_path / "modules").write_text(LIST)
    out = tmp_path / "modprobe.args"
    program = "\n".join(
        [
            'die() { echo "died: $*" >&2; exit 1; }',
            f'modprobe() {{ [ "$1" = -a ] && shift; echo "$@" >"{out}"; }}',
            f"MODULE_LIST={tmp_path / 'modules'}",
            f"PCI_DEVICES={devices}",
            *(_function(script, name) for name in FUNCTIONS),
            "load_modules",
            'echo "virtio:$VIRTIO"',
        ]
    )
    done = subprocess.run(["busybox", "sh", "-c", program], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return out.read_text().split()


def test_under_qemu_here_no_vsock_driver_loads(tmp_path: Path) -> None:
    """QEMU's devices as this host gives them: transitional ones on the root bus (their type in
    the subsystem id), modern ones behind PCIe ports, and no vsock."""
    devices = tmp_path / "pci"
    _pci_device(devices, "0000:00:00.0", "0x8086", "0x29c0")  # the host bridge
    _pci_device(devices, "0000:00:02.0", "0x1af4", "0x1001", "0x0002")  # virtio-blk, transitional
    _pci_device(devices, "0000:00:03.0", "0x1af4", "0x1005", "0x0004")  # virtio-rng, transitional
    _pci_device(devices, "0000:01:00.0", "0x1af4", "0x1043")  # virtio-serial, modern
    loaded = _loaded(tmp_path, devices)
    assert loaded == ["virtio", "virtio_pci", "virtio_console", "virtio-rng", "shared", "virtio_net"]


def test_under_cloud_hypervisor_the_vsock_driver_loads_and_no_console_one(tmp_path: Path) -> None:
    devices = tmp_path / "pci"
    _pci_device(devices, "0000:00:01.0", "0x1af4", "0x1042")  # virtio-blk
    _pci_device(devices, "0000:00:02.0", "0x1af4", "0x1053")  # vsock
    loaded = _loaded(tmp_path, devices)
    assert loaded == ["virtio", "virtio_pci", "vsock", "shared", "virtio_net"]


def test_a_vm_with_no_pci_devices_loads_only_what_always_loads(tmp_path: Path) -> None:
    (tmp_path / "pci").mkdir()
    assert _loaded(tmp_path, tmp_path / "pci") == ["virtio", "virtio_pci", "virtio_net"]


def test_the_init_script_passes_shellcheck() -> None:
    assert_shellcheck_clean(Path(str(resources.files("vmsandbox.guest.image").joinpath("init.sh"))))
