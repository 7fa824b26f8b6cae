"""Pause, resume, snapshot and restore-from-snapshot through the runtime, on the process backend:
a paused pod keeps its processes' state, and refused snapshots or restores leave nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.runtime.conftest import BundleFactory, assert_no_leaks
from tests.runtime.support import counts, wait_for_count
from vmsandbox.hypervisor.base import SnapshotUnsupported
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.cli import main
from vmsandbox.runtime.errors import BadPath, InvalidConfig, WrongState
from vmsandbox.runtime.snapshots import ANNOTATION_RESTORE_FROM, snapshot_root

SANDBOX = {"io.kubernetes.cri.container-type": "sandbox"}
COUNTER = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done"]


def test_pause_keeps_a_counter_where_it_was_and_resume_continues_it(
    rt: Runtime, make_bundle: BundleFactory
) -> None:
    rt.create("ctr", make_bundle(COUNTER, annotations=SANDBOX))
    rt.start("ctr")
    log = Path(rt.state("ctr").log_path or "")
    wait_for_count(log, 5)
    assert main(["--root", str(rt.root), "pause", "ctr"]) == 0
    assert rt.state("ctr").status == "paused"
    rt.pause("ctr")  # idempotent
    frozen = counts(log)[-1]
    time.sleep(1.5)
    assert counts(log)[-1] == frozen, "the counter advanced while paused"
    with pytest.raises(WrongState, match="paused"):
        rt.delete("ctr")
    assert main(["--root", str(rt.root), "resume", "ctr"]) == 0
    assert rt.state("ctr").status == "running"
    wait_for_count(log, frozen + 5)
    seen = counts(log)
    # It went on from where it stopped: no restart from 1, no gap.
    assert seen[: seen.index(frozen) + 2][-2:] == [frozen, frozen + 1]
    assert seen == list(range(1, len(seen) + 1))


def test_a_paused_sandbox_is_deleted_with_force(rt: Runtime, make_bundle: BundleFactory) -> None:
    rt.create("ctr", make_bundle(["sleep", "600"], annotations=SANDBOX))
    rt.start("ctr")
    rt.pause("ctr")
    rt.delete("ctr", force=True)
    assert rt.list() == []


def test_the_process_backend_refuses_snapshots_and_leaves_the_pod_running(
    rt: Runtime, make_bundle: BundleFactory
) -> None:
    rt.create("ctr", make_bundle(["sleep", "600"], annotations=SANDBOX))
    rt.start("ctr")
    with pytest.raises(SnapshotUnsupported, match="process backend"):
        rt.snapshot("ctr", "s1")
    assert rt.state("ctr").status == "running"
    assert not (snapshot_root(rt.root) / "s1").exists()
    with pytest.raises(BadPath, match="not inside"):
        rt.snapshot("ctr", "../../etc")


@pytest.mark.parametrize(
    ("value", "error"),
    [("/etc", BadPath), ("../x", BadPath), ("", BadPath), ("missing", InvalidConfig)],
)
def test_a_restore_annotation_outside_the_snapshot_root_is_refused_before_anything_is_built(
    rt: Runtime, make_bundle: BundleFactory, value: str, error: type[Exception]
) -> None:
    bundle = make_bundle(["true"], annotations={**SANDBOX, ANNOTATION_RESTORE_FROM: value})
    with pytest.raises(error):
        rt.create("ctr", bundle)
    assert rt.list() == []
    assert_no_leaks(rt.root)


def test_restoring_on_the_process_backend_rolls_back(rt: Runtime, make_bundle: BundleFactory) -> None:
    snap = snapshot_root(rt.root) / "s1"
    snap.mkdir(parents=True)
    bundle = make_bundle(["true"], annotations={**SANDBOX, ANNOTATION_RESTORE_FROM: "s1"})
    with pytest.raises(SnapshotUnsupported):
        rt.create("ctr", bundle)
    assert rt.list() == []
    snap.rmdir()
    snapshot_root(rt.root).rmdir()
    assert_no_leaks(rt.root)
