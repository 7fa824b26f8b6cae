"""The built kernel, initramfs and root image boot in QEMU (TCG) and run the guest agent."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest_image.conftest import CleanBuild
from tests.tools import require_tools
from vmsandbox.hypervisor.base import GUEST_AGENT_SERIAL_NAME

pytestmark = [pytest.mark.vm, pytest.mark.guest_image, pytest.mark.timeout(1800)]

QEMU = "qemu-system-x86_64"
# Generous: TCG on two busy cores; a healthy boot reaches the agent in 10-30 s.
BOOT_DEADLINE = 180.0


class Guest:
    """One QEMU/TCG VM booting the artifacts, its serial console captured to a file."""

    def __init__(
        self, image: Path, workdir: Path, *, root_serial: str, agent_port: bool, kernel_args: str
    ) -> None:
        self.console = workdir / "console.log"
        argv = [
            QEMU,
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            f"file:{self.console}",
            "-no-reboot",
            "-kernel",
            str(image / "vmlinuz"),
            "-initrd",
            str(image / "initramfs.img"),
            "-append",
            f"console=ttyS0 panic=-1 quiet {kernel_args}".strip(),
            "-drive",
            f"file={image / 'rootfs.img'},if=none,id=root,format=raw,readonly=on",
            "-device",
            f"virtio-blk-pci,drive=root,serial={root_serial}",
        ]
        if agent_port:
            argv += [
                "-device",
                "virtio-serial-pci",
                "-chardev",
                f"socket,id=agent,path={workdir / 'agent.sock'},server=on,wait=off",
                "-device",
                f"virtserialport,chardev=agent,name={GUEST_AGENT_SERIAL_NAME}",
            ]
        self.qemu_log = (workdir / "qemu.log").open("wb")
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.qemu_log, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_for(self, pattern: str, deadline: float = BOOT_DEADLINE) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            text = self.text()
            if re.search(pattern, text):
                return text
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} on the console; it shows:\n{self.text()}")

    def wait_exit(self, deadline: float = BOOT_DEADLINE) -> int:
        try:
            return self.process.wait(deadline)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the VM did not power off; console:\n{self.text()}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.qemu_log.close()


class Booter:
    """Starts guests from one image directory and stops every one of them at the end."""

    def __init__(self, image: Path, workdir: Path) -> None:
        self.image = image
        self.workdir = workdir
        self.guests: list[Guest] = []

    def __call__(
        self, *, root_serial: str = "vmsb-root", agent_port: bool = True, kernel_args: str = ""
    ) -> Guest:
        workdir = self.workdir / f"vm{len(self.guests)}"
        workdir.mkdir()
        guest = Guest(
            self.image, workdir, root_serial=root_serial, agent_port=agent_port, kernel_args=kernel_args
        )
        self.guests.append(guest)
        return guest

    def close(self) -> None:
        for guest in self.guests:
            guest.close()


@pytest.fixture
def boot(clean_build: CleanBuild, tmp_path: Path) -> Iterator[Booter]:
    require_tools(QEMU)
    booter = Booter(clean_build.out, tmp_path)
    yield booter
    booter.close()
    for guest in booter.guests:
        assert guest.process.returncode is not None, "a QEMU process outlived its test"


def _stages(console: str) -> list[str]:
    return re.findall(r"vmsandbox-init: stage=(\w+)", console)


def test_init_mounts_the_root_overlay_and_starts_the_agent_on_the_named_port(boot: Booter) -> None:
    guest = boot()
    console = guest.wait_for(r"vmsandbox-guest: ready")
    assert _stages(console) == ["init", "modules", "rootfs", "agent"]
    assert "stage=rootfs device=/dev/vda read_ahead_kb=4096 " in console, "the root disk reads ahead 4 MiB"
    assert "FATAL" not in console
    assert guest.process.poll() is None, "the VM stopped although the agent is serving"
    # The VM has a virtio-serial port and no vsock or entropy device: their drivers stay out.
    loaded = re.search(r"stage=modules loaded=(\S+)", console)
    assert loaded, console
    assert "virtio_console" in loaded.group(1).split(",")
    assert not {"vsock", "virtio-rng"} & set(loaded.group(1).split(",")), loaded.group(1)
    assert {"virtio_blk", "overlay", "virtio_net"} <= set(loaded.group(1).split(","))


def test_agent_exit_powers_the_vm_off_with_the_reason(boot: Booter) -> None:
    # A listen address the agent cannot bind makes it exit at once.
    guest = boot(kernel_args="vmsandbox.listen=unix:/nonexistent/agent.sock")
    assert guest.wait_exit() == 0
    console = guest.text()
    assert "stage=agent" in console
    assert re.search(r"guest agent (exited with status [1-9]\d*|killed by signal \d+); powering off", console)


def test_missing_root_disk_is_reported_and_powers_off(boot: Booter) -> None:
    guest = boot(root_serial="not-the-root")
    assert guest.wait_exit() == 0
    console = guest.text()
    assert "FATAL: no virtio-blk disk with serial 'vmsb-root'; powering off" in console
    assert "stage=agent" not in console
