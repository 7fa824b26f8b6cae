"""Pause/resume and restore-from-snapshot through ``vmsandbox-runtime --hypervisor qemu`` (TCG).

A counter in a paused pod does not advance and resumes from where it stopped; a sandbox
created from a snapshot's restored VM reaches its guest agent over a new serial line and
runs its container; a sandbox's own snapshot is taken with the pod running on afterwards.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from tests.qemu.test_runtime_qemu import SANDBOX, Cli, assert_nothing_left, bundle
from tests.qemu.test_runtime_qemu import env as env  # the fixture
from tests.runtime.support import counts, wait_for_count
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.snapshots import ANNOTATION_RESTORE_FROM, snapshot_root

pytestmark = pytest.mark.vm

COUNTER = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done"]


#: The guest's counter, as its console relays it to the file: slower under TCG.
wait_above = functools.partial(wait_for_count, timeout=120.0, interval=0.2)


def test_pause_and_resume_keep_a_counter_in_a_qemu_guest(env: tuple[Cli, Path], tmp_path: Path) -> None:
    cli, rootfs = env
    out = cli.create("pod", bundle(tmp_path / "pod", rootfs, COUNTER, SANDBOX))
    cli.run("start", "pod")
    wait_above(out, 3)
    cli.run("pause", "pod")
    assert cli.state("pod")["status"] == "paused"
    time.sleep(1.0)  # output already in flight reaches the file
    frozen = counts(out)[-1]
    time.sleep(3.0)
    assert counts(out)[-1] == frozen, "the counter advanced while the VM was paused"
    cli.run("resume", "pod")
    assert cli.state("pod")["status"] == "running"
    wait_above(out, frozen + 3)
    seen = counts(out)
    assert seen == list(range(1, len(seen) + 1)), "the counter restarted or skipped after resume"

    # The pod's own snapshot: taken paused, the pod resumed afterwards.
    manifest = cli.run("snapshot", "pod", "podsnap")[1]
    assert '"hypervisor": "qemu"' in manifest
    assert cli.state("pod")["status"] == "running"
    wait_above(out, counts(out)[-1] + 2)
    cli.run("delete", "--force", "pod")
    assert_nothing_left(cli.root)


def test_a_sandbox_restored_from_a_snapshot_runs_its_container(
    env: tuple[Cli, Path], tmp_path: Path, guest_image: Path
) -> None:
    cli, rootfs = env
    config = HypervisorConfig.load().model_copy(update={"guest_image_dir": guest_image})
    runtime = Runtime(root=cli.root, hypervisor="qemu", config=config)
    manifest = runtime.make_snapshot("base")
    assert manifest.hypervisor == "qemu" and manifest.disks == []
    assert sorted(p.name for p in (snapshot_root(cli.root) / "base").iterdir()) == [
        "memory.bin",
        "snapshot.json",
    ]
    assert_nothing_left(cli.root)  # the template VM is gone; only its files stay

    annotations = {**SANDBOX, ANNOTATION_RESTORE_FROM: "base"}
    script = ["sh", "-c", "echo restored $(cat /proc/sys/kernel/random/boot_id | wc -c)"]
    for name in ("r1", "r2"):  # one snapshot, two VMs
        out = cli.create(name, bundle(tmp_path / name, rootfs, script, annotations))
        state = cli.state(name)
        assert state["vm"]["endpoints"]["restored_from"].endswith("/snapshots/base")
        assert state["timings"]["restore"] > 0
        cli.run("start", name)
        assert cli.wait_stopped(name)["exit_code"] == 0
        assert out.read_text() == "restored 37\n"
    for name in ("r1", "r2"):
        cli.run("delete", name)
    assert_nothing_left(cli.root)
    assert (snapshot_root(cli.root) / "base" / "memory.bin").is_file(), "restores leave the snapshot"
