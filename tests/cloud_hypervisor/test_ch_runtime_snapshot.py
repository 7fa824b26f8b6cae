"""The runtime over the Cloud Hypervisor stand-in: a template snapshot, sandboxes restored from
it that run their containers, a running sandbox's own snapshot, and restores that fail at each
step leaving nothing behind but the snapshot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.cloud_hypervisor.conftest import Workspace
from tests.cloud_hypervisor.test_ch_runtime_e2e import guest_images as guest_images  # the fixture
from tests.leaks import processes_mentioning
from tests.runtime.support import base_config, leftovers, write_bundle
from tests.tools import require_tools
from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.errors import InjectedFault
from vmsandbox.runtime.faults import FAIL_AT_ENV
from vmsandbox.runtime.snapshots import ANNOTATION_RESTORE_FROM, snapshot_root

RESTORED = {"io.kubernetes.cri.container-type": "sandbox", ANNOTATION_RESTORE_FROM: "base"}


@pytest.fixture
def runtime(workspace: Workspace, guest_images: Path) -> Runtime:
    require_tools("runc", "unshare", "mkfs.ext4", "debugfs")
    config = HypervisorConfig.load().model_copy(update={"guest_image_dir": guest_images})
    return Runtime(root=workspace.root / "rt", hypervisor="cloud-hypervisor", config=config)


def wait_exit(rt: Runtime, cid: str) -> int | None:
    deadline = time.monotonic() + 60
    while rt.state(cid).status != "stopped":
        assert time.monotonic() < deadline, f"{cid} still {rt.state(cid).status}"
        time.sleep(0.1)
    return rt.state(cid).exit_code


def assert_only_snapshots_left(rt: Runtime) -> None:
    assert rt.list() == []
    assert leftovers(rt.root, keep=("snapshots",)) == []
    assert processes_mentioning(str(rt.root)) == []


def test_restored_sandboxes_run_their_containers(
    runtime: Runtime, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = runtime.make_snapshot("base")
    assert manifest.hypervisor == "cloud-hypervisor"
    assert_only_snapshots_left(runtime)

    for name in ("r1", "r2"):
        bundle = write_bundle(
            workspace.root / name, base_config(["sh", "-c", "echo restored"]) | {"annotations": RESTORED}
        )
        runtime.create(name, bundle)
        state = runtime.state(name)
        assert state.vm is not None and state.vm.endpoints["restored_from"].endswith("/snapshots/base")
        assert state.timings.restore is not None and state.timings.restore > 0
        runtime.start(name)
        assert wait_exit(runtime, name) == 0
        assert Path(state.log_path or "").read_text() == "restored\n"
        runtime.delete(name)

    # A running sandbox's own snapshot; the sandbox runs on afterwards.
    bundle = write_bundle(workspace.root / "live", base_config(["sleep", "600"]) | {"annotations": RESTORED})
    runtime.create("live", bundle)
    runtime.start("live")
    runtime.snapshot("live", "of-live")
    assert (snapshot_root(runtime.root) / "of-live" / "snapshot.json").is_file()
    assert runtime.state("live").status == "running"
    runtime.delete("live", force=True)
    assert_only_snapshots_left(runtime)


@pytest.mark.parametrize("step", ["boot", "create-sandbox", "create-container", "relay"])
def test_a_restore_failing_at_each_step_rolls_back(
    runtime: Runtime, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    runtime.make_snapshot("base")
    bundle = write_bundle(workspace.root / "b", base_config(["true"]) | {"annotations": RESTORED})
    monkeypatch.setenv(FAIL_AT_ENV, step)
    with pytest.raises(InjectedFault):
        runtime.create("ctr", bundle)
    assert_only_snapshots_left(runtime)


def test_a_broken_snapshot_fails_the_create_and_rolls_back(runtime: Runtime, workspace: Workspace) -> None:
    runtime.make_snapshot("base")
    (snapshot_root(runtime.root) / "base" / "memory-ranges").unlink()
    bundle = write_bundle(workspace.root / "b", base_config(["true"]) | {"annotations": RESTORED})
    with pytest.raises(HypervisorError, match="memory-ranges"):
        runtime.create("ctr", bundle)
    assert_only_snapshots_left(runtime)
