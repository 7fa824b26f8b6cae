"""QEMU pause/resume and snapshot/restore against real guests (TCG here): the restored VM's
guest agent answers over a new serial line, and a source of fault paths leaves nothing behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.leaks import processes_mentioning
from tests.qemu.test_driver import assert_torn_down, config, hello_disks, image_spec, ping
from vmsandbox.hypervisor.base import (
    SNAPSHOT_MANIFEST,
    DiskSpec,
    HypervisorError,
    SnapshotManifest,
    VMSpec,
)
from vmsandbox.hypervisor.qemu import QemuDriver
from vmsandbox.hypervisor.qemu.firmware import firmware_for
from vmsandbox.hypervisor.qemu.migration import MEMORY_FILE


def restore_spec(state_dir: Path) -> VMSpec:
    return VMSpec(vm_id=state_dir.name, state_dir=state_dir, agent_timeout=120)


@pytest.mark.vm
def test_pause_snapshot_restore_and_the_agent_answers_on_the_new_line(
    guest_image: Path, qemu_binary: str, state_root: Path
) -> None:
    writable, plugged = hello_disks(state_root, "w.img", "p.img")
    driver = QemuDriver(config(qemu_binary))
    disks = [DiskSpec(path=writable, serial="vmsb-w", readonly=False)]
    source = driver.boot(image_spec(guest_image, state_root / "src", disks))
    restored = None
    try:
        driver.attach_disk(source, DiskSpec(path=plugged, serial="vmsb-p", readonly=True))
        driver.pause(source)
        assert driver.paused(source)
        driver.resume(source)
        assert not driver.paused(source)
        with driver.connect(source) as sock:
            ping(sock)

        # A connection open across the snapshot: the restored guest still holds its channel,
        # while the restored VM's new mux proxy numbers its channels from 1 again.
        held = driver.connect(source)
        ping(held)
        snap = state_root / "snap"
        started = time.monotonic()
        manifest = driver.snapshot(source, snap)
        snapshot_seconds = time.monotonic() - started
        assert driver.paused(source), "the source stays paused after a snapshot"
        assert (snap / MEMORY_FILE).stat().st_size > 0 and (snap / SNAPSHOT_MANIFEST).is_file()
        assert SnapshotManifest.load(snap) == manifest
        assert {d.serial: d.readonly for d in manifest.disks} == {"vmsb-w": False, "vmsb-p": True}
        assert manifest.details["firmware"] == source.endpoints["firmware"] == firmware_for("auto")
        assert (snap / "disk-vmsb-w.img").is_file(), "a writable disk is copied into the snapshot"
        # The source can go on after being snapshotted.
        driver.resume(source)
        with driver.connect(source) as sock:
            source_pid = ping(sock).agent_pid

        restored = QemuDriver(config(qemu_binary)).restore(restore_spec(state_root / "dst"), snap)
        assert restored.endpoints["restored_from"] == str(snap)
        assert restored.endpoints["firmware"] == manifest.details["firmware"], "the firmware it ran"
        assert restored.timings.vm_boot > 0
        for _ in range(12):  # past the number of the channel held open across the snapshot
            with QemuDriver(config(qemu_binary)).connect(restored) as sock:
                # The very agent process of the snapshot: restored, not rebooted.
                assert ping(sock).agent_pid == source_pid
        ping(held)  # the source's own connection still works
        held.close()
        assert (state_root / "dst" / "disk-vmsb-w.img").is_file(), "each restore owns a copy"
        print(f"snapshot {snapshot_seconds:.2f}s, restore {restored.timings.vm_boot:.0f} ms")
    finally:
        driver.stop(source)
        if restored is not None:
            QemuDriver(config(qemu_binary)).stop(restored)
    assert_torn_down(state_root / "src")
    assert_torn_down(state_root / "dst")


@pytest.mark.vm
def test_a_snapshot_into_a_non_empty_directory_is_refused_and_a_broken_one_restores_nothing(
    guest_image: Path, qemu_binary: str, state_root: Path
) -> None:
    driver = QemuDriver(config(qemu_binary))
    busy = state_root / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    source = driver.boot(image_spec(guest_image, state_root / "src"))
    try:
        with pytest.raises(HypervisorError, match="not empty"):
            driver.snapshot(source, busy)
        assert not driver.paused(source)
        snap = state_root / "snap"
        driver.snapshot(source, snap)
    finally:
        driver.stop(source)
    # A truncated memory image: QEMU fails the incoming migration; nothing of the VM stays.
    with (snap / MEMORY_FILE).open("r+b") as image:
        image.truncate(4096)
    with pytest.raises(HypervisorError):
        QemuDriver(config(qemu_binary)).restore(restore_spec(state_root / "dst"), snap)
    assert_torn_down(state_root / "dst")
    with pytest.raises(HypervisorError, match="not a complete snapshot"):
        QemuDriver(config(qemu_binary)).restore(restore_spec(state_root / "dst2"), state_root / "busy")
    assert processes_mentioning(str(state_root)) == []
