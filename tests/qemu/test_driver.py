"""QemuDriver against real QEMU guests (TCG here): the guest image, and guests without an agent."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.leaks import processes_mentioning, sockets_under
from vmsandbox.guest.protocol import Ping, Pong, recv_reply, send_frame
from vmsandbox.hypervisor.base import SERIAL_LOG_ENDPOINT, DiskSpec, HypervisorError, VMGone, VMHandle, VMSpec
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.qemu import QemuDriver
from vmsandbox.hypervisor.qemu import driver as driver_module
from vmsandbox.hypervisor.qemu.probe import probe_initramfs
from vmsandbox.hypervisor.qemu.qmp import QMPClient
from vmsandbox.hypervisor.vmmuser import VmmUser


def config(qemu_binary: str) -> HypervisorConfig:
    return HypervisorConfig(qemu_binary=qemu_binary)


def image_spec(guest_image: Path, state_dir: Path, disks: list[DiskSpec] | None = None) -> VMSpec:
    return VMSpec(
        vm_id=state_dir.name,
        state_dir=state_dir,
        kernel=guest_image / "vmlinuz",
        initramfs=guest_image / "initramfs.img",
        root_disk=guest_image / "rootfs.img",
        memory_mib=512,
        agent_timeout=120,
        disks=disks or [],
    )


def dummy_spec(tmp_path: Path, state_dir: Path | None = None, **paths: Path) -> VMSpec:
    """A spec whose kernel, initramfs and root disk are one dummy file (``paths`` override them):
    for the faults found before anything boots."""
    dummy = tmp_path / "k"
    dummy.write_bytes(b"k")
    files = {"kernel": dummy, "initramfs": dummy, "root_disk": dummy, **paths}
    return VMSpec(vm_id="x", state_dir=state_dir or tmp_path / "vm", **files)


def ping(sock: socket.socket) -> Pong:
    sock.settimeout(30)
    send_frame(sock, Ping())
    reply = recv_reply(sock)
    assert isinstance(reply, Pong)
    return reply


def assert_torn_down(state_dir: Path) -> None:
    assert processes_mentioning(str(state_dir)) == [], "QEMU or its mux proxy survived"
    assert not state_dir.exists() or sockets_under(state_dir) == []
    assert not state_dir.exists(), "the VM's state directory was left behind"


def process_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of ``pid``, from ``/proc/<pid>/status``."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def hello_disks(state_root: Path, *names: str) -> list[Path]:
    """Small ext4 images under ``state_root``, one a name, each holding the same file ``hello``."""
    content = state_root / "content"
    content.mkdir()
    (content / "hello").write_text("hi\n")
    disks = [state_root / name for name in names]
    for path in disks:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(path), "8M"], check=True)
    return disks


def probe_spec(guest_image: Path, state_dir: Path, says: bytes, *, power_off: bool = True) -> VMSpec:
    """The guest image's spec with an init that only prints ``says`` (then powers off, or hangs):
    a guest whose agent never comes up."""
    initramfs = state_dir.with_name(f"{state_dir.name}-probe.img")
    initramfs.write_bytes(probe_initramfs(says, power_off=power_off))
    spec = image_spec(guest_image, state_dir)
    spec.initramfs = initramfs
    return spec


@pytest.mark.vm
def test_guest_image_boots_serves_many_connections_hotplugs_and_stops(
    guest_image: Path, qemu_binary: str, state_root: Path, vmm_user: VmmUser
) -> None:
    extra, booted = hello_disks(state_root, "extra.img", "boot.img")
    spec = image_spec(guest_image, state_root / "vm1", disks=[DiskSpec(path=booted, serial="vmsb-boot")])
    handle = QemuDriver(config(qemu_binary)).boot(spec)
    try:
        assert handle.timings.vmm_start > 0 and handle.timings.vm_boot > 0 and handle.timings.agent_ready > 0
        assert process_ids(handle.vmm_pid) == (vmm_user.uid, vmm_user.gid), "QEMU runs as the VMM user"
        assert spec.state_dir.stat().st_uid == vmm_user.uid
        # The guest's own clock: the kernel took some time to reach /init, then the agent to listen.
        kernel, agent = handle.timings.kernel_to_init, handle.timings.init_to_agent_ready
        assert kernel is not None and agent is not None
        assert kernel > 0 and 0 < agent < handle.timings.agent_ready + handle.timings.vm_boot
        # A short-lived CLI only has the persisted handle: every call below uses a fresh driver.
        saved = VMHandle.load(spec.state_dir)
        assert saved == handle
        assert QemuDriver(config(qemu_binary)).alive(saved)

        pongs: list[int] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                with QemuDriver(config(qemu_binary)).connect(saved) as sock:
                    pongs.append(ping(sock).agent_pid)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == [] and len(pongs) == 8 and len(set(pongs)) == 1

        QemuDriver(config(qemu_binary)).attach_disk(saved, DiskSpec(path=extra, serial="vmsb-extra"))
        with QMPClient.connect(Path(saved.endpoints["qmp"])) as qmp:
            block = {entry["device"] or entry.get("qdev", ""): entry for entry in qmp.execute("query-block")}
            qdevs = {entry.get("qdev", "") for entry in qmp.execute("query-block")}
        assert any("blk-vmsb-extra" in name for name in qdevs), block
        assert any("blk-vmsb-boot" in name for name in qdevs)
        assert any("blk-vmsb-root" in name for name in qdevs)
        with pytest.raises(HypervisorError, match="extra"):
            # The same serial twice is refused by QEMU (duplicate id), and reported.
            QemuDriver(config(qemu_binary)).attach_disk(saved, DiskSpec(path=extra, serial="vmsb-extra"))
    finally:
        started = time.monotonic()
        QemuDriver(config(qemu_binary)).stop(handle)
        stop_seconds = time.monotonic() - started
    assert stop_seconds < 10
    assert_torn_down(spec.state_dir)
    assert not QemuDriver(config(qemu_binary)).alive(handle)
    with pytest.raises(VMGone):
        QemuDriver(config(qemu_binary)).connect(handle, timeout=1)
    # stop is idempotent.
    QemuDriver(config(qemu_binary)).stop(handle)


@pytest.mark.vm
def test_absent_guest_agent_fails_within_the_deadline_and_tears_down(
    guest_image: Path, qemu_binary: str, state_root: Path
) -> None:
    says = b"vmsandbox-init: stage=init (this guest has no agent)\n"
    spec = probe_spec(guest_image, state_root / "vm2", says, power_off=False)
    spec.agent_timeout = 6
    seen: list[float] = []
    done = threading.Event()

    def watch_console() -> None:
        console = spec.state_dir / "console.log"
        while not done.is_set() and not seen:
            if console.exists() and b"vmsandbox-init: stage=init" in console.read_bytes():
                seen.append(time.monotonic())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_console)
    watcher.start()
    try:
        with pytest.raises(HypervisorError) as info:
            QemuDriver(config(qemu_binary)).boot(spec)
        failed_at = time.monotonic()
    finally:
        done.set()
        watcher.join()
    # The deadline runs from the kernel handing over to init, as seen on the console.
    assert seen, "init never printed its marker"
    assert 6 - 0.5 <= failed_at - seen[0] < 6 + 5
    assert info.value.step == "agent ready"
    assert "did not answer within 6s of init" in str(info.value)
    assert "this guest has no agent" in str(info.value)
    assert_torn_down(spec.state_dir)


@pytest.mark.vm
def test_guest_powering_off_before_the_agent_is_reported_with_its_console(
    guest_image: Path, qemu_binary: str, state_root: Path
) -> None:
    """What a crashing agent looks like from the host: the guest's init powers the VM off."""
    says = b"vmsandbox-init: guest agent exited with status 1; powering off\n"
    spec = probe_spec(guest_image, state_root / "vm3", says)
    started = time.monotonic()
    with pytest.raises(VMGone) as info:
        QemuDriver(config(qemu_binary)).boot(spec)
    assert time.monotonic() - started < 90
    message = str(info.value)
    assert "exited" in message and "before the guest agent was ready" in message
    assert "guest agent exited with status 1" in message, "the console tail names the cause"
    assert_torn_down(spec.state_dir)


def test_missing_artifacts_are_named_and_nothing_is_started(tmp_path: Path) -> None:
    driver = QemuDriver(HypervisorConfig(qemu_binary="/nonexistent/qemu"))
    spec = VMSpec(vm_id="x", state_dir=tmp_path / "vm")
    with pytest.raises(HypervisorError, match=r"VMSpec\.kernel is required"):
        driver.boot(spec)
    spec = dummy_spec(tmp_path, initramfs=tmp_path / "nope")
    with pytest.raises(HypervisorError, match=r"VMSpec\.initramfs: .*nope is not a file"):
        driver.boot(spec)
    assert not (tmp_path / "vm").exists()


def test_a_socket_path_too_long_is_refused_up_front(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    spec = dummy_spec(tmp_path, deep)
    with pytest.raises(HypervisorError) as info:
        QemuDriver(HypervisorConfig(qemu_accel="tcg")).boot(spec)
    assert info.value.step == "socket path"
    assert not deep.exists()


def test_qemu_that_cannot_start_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    spec = dummy_spec(tmp_path)
    with pytest.raises(HypervisorError) as info:
        QemuDriver(HypervisorConfig(qemu_accel="tcg", qemu_binary="/nonexistent/qemu", vmm_user="root")).boot(
            spec
        )
    assert info.value.step == "vmm start"
    assert not (tmp_path / "vm").exists()


@pytest.mark.parametrize("setting", ["no-such-vmm-user", "12:x", "0:0x"])
def test_a_vmm_user_that_does_not_exist_is_refused_naming_the_setting(tmp_path: Path, setting: str) -> None:
    spec = dummy_spec(tmp_path)
    with pytest.raises(HypervisorError) as info:
        QemuDriver(HypervisorConfig(qemu_accel="tcg", vmm_user=setting)).boot(spec)
    assert info.value.step == "vmm user"
    assert "vmm_user" in str(info.value) and "vmmUser" in str(info.value) and setting in str(info.value)
    assert not (tmp_path / "vm").exists()
    assert processes_mentioning(str(tmp_path)) == []


def test_a_state_dir_the_vmm_user_cannot_reach_is_refused_naming_the_directory(
    tmp_path: Path, vmm_user: VmmUser
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    spec = dummy_spec(tmp_path, private / "vm")
    with pytest.raises(HypervisorError) as info:
        QemuDriver(HypervisorConfig(qemu_accel="tcg", vmm_user=vmm_user.name)).boot(spec)
    assert info.value.step == "vmm user" and str(private) in str(info.value)
    assert not spec.state_dir.exists(), "nothing is left behind"
    assert processes_mentioning(str(private)) == []


@pytest.mark.vm
def test_a_kernel_that_never_reaches_init_fails_the_boot_deadline(
    guest_image: Path, qemu_binary: str, state_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a hung KVM looks like: nothing from init on the console before the kernel deadline."""
    monkeypatch.setitem(driver_module.KERNEL_BOOT_TIMEOUT, "tcg", 2.0)
    initramfs = state_root / "silent.img"
    initramfs.write_bytes(probe_initramfs(b"no marker from this init\n", power_off=False))
    spec = image_spec(guest_image, state_root / "vm4")
    spec.initramfs = initramfs
    with pytest.raises(HypervisorError) as info:
        QemuDriver(HypervisorConfig(qemu_binary=qemu_binary, qemu_accel="tcg")).boot(spec)
    assert info.value.step == "vm boot"
    assert "did not reach init" in str(info.value) and "within 2s under tcg" in str(info.value)
    assert_torn_down(spec.state_dir)


@pytest.mark.vm
def test_real_agent_crashing_at_start_is_reported_and_torn_down(
    guest_image: Path, qemu_binary: str, state_root: Path
) -> None:
    """The image's own agent, told to listen on a spec it rejects: it exits, init powers off."""
    spec = image_spec(guest_image, state_root / "vm5")
    spec.kernel_args = ["vmsandbox.listen=bogus:nowhere"]
    with pytest.raises(VMGone) as info:
        QemuDriver(config(qemu_binary)).boot(spec)
    message = str(info.value)
    assert info.value.step == "agent ready"
    assert "before the guest agent was ready" in message
    assert "guest agent exited with status" in message, "the console tail names the cause"
    assert_torn_down(spec.state_dir)


def test_the_guest_kernel_skips_the_initcalls_it_is_told_to(
    guest_image: Path, qemu_binary: str, state_root: Path
) -> None:
    """With every initcall logged, the skipped ones are absent and the others are there."""
    spec = image_spec(guest_image, state_root / "vm6")
    spec.kernel_args = ["initcall_debug", "ignore_loglevel"]
    driver = QemuDriver(config(qemu_binary))
    handle = driver.boot(spec)
    try:
        console = Path(handle.endpoints[SERIAL_LOG_ENDPOINT]).read_text(errors="replace")
    finally:
        driver.stop(handle)
    assert "calling  inet_init+" in console and "calling  acpi_init+" in console, console[-2000:]
    for name in driver_module.SKIPPED_INITCALLS:
        assert f"calling  {name}+" not in console, f"{name} ran"
    assert_torn_down(spec.state_dir)
