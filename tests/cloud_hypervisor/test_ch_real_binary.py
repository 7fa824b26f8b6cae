"""The lifecycle against a real ``cloud-hypervisor`` binary and KVM, when this machine has both
(and the guest image): skipped otherwise, with the reason. The stand-in is never used here."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cloud_hypervisor.conftest import STANDIN_DIR, sockets_under
from vmsandbox.guest.protocol import Ping, Pong, recv_reply, send_frame
from vmsandbox.hypervisor.base import DiskSpec, VMSpec
from vmsandbox.hypervisor.cloud_hypervisor import CloudHypervisorDriver
from vmsandbox.hypervisor.config import HypervisorConfig

KVM_GET_API_VERSION = 0xAE00


def _real_binary() -> str | None:
    path = os.environ.get("PATH", "")
    search = os.pathsep.join(p for p in path.split(os.pathsep) if Path(p).resolve() != STANDIN_DIR.resolve())
    return shutil.which("cloud-hypervisor", path=search)


def _kvm_problem() -> str | None:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm is not usable: {exc.strerror}"
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != 12:
            return "/dev/kvm answers an unexpected KVM API version"
    finally:
        os.close(fd)
    return None


def _skip_reason(config: HypervisorConfig) -> str | None:
    if _real_binary() is None:
        return "no real cloud-hypervisor binary on PATH"
    problem = _kvm_problem()
    if problem:
        return problem
    missing = [
        n for n in ("vmlinuz", "initramfs.img", "rootfs.img") if not (config.guest_image_dir / n).is_file()
    ]
    if missing:
        return f"guest image incomplete in {config.guest_image_dir} (missing {', '.join(missing)})"
    return None


@pytest.mark.vm
def test_real_cloud_hypervisor_lifecycle(tmp_path: Path) -> None:
    config = HypervisorConfig.load()
    reason = _skip_reason(config)
    if reason:
        pytest.skip(reason)
    binary = _real_binary()
    assert binary is not None
    driver = CloudHypervisorDriver(config.model_copy(update={"cloud_hypervisor_binary": binary}))
    images = config.guest_image_dir
    state_dir = Path("/tmp") / f"chreal{os.getpid()}"  # short: the VM's sockets live here
    disk = tmp_path / "extra.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk), "8M"], check=True)
    handle = driver.boot(
        VMSpec(
            vm_id="real",
            state_dir=state_dir,
            kernel=images / "vmlinuz",
            initramfs=images / "initramfs.img",
            root_disk=images / "rootfs.img",
            agent_timeout=60,
        )
    )
    try:
        assert driver.info(handle).state == "Running"
        with driver.connect(handle, timeout=30) as sock:
            sock.settimeout(30)
            send_frame(sock, Ping())
            assert isinstance(recv_reply(sock), Pong)
        landed = driver.hotplug_disk(handle, DiskSpec(path=disk, serial="extra"))
        assert landed is not None and landed.bdf.startswith("0000:")
        driver.pause(handle)
        assert driver.info(handle).state == "Paused"
        driver.resume(handle)
        assert driver.counters(handle)
    finally:
        driver.stop(handle)
    assert not driver.alive(handle)
    assert not state_dir.exists() or sockets_under(state_dir) == []
