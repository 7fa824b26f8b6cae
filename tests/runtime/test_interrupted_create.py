"""A create killed at any step (SIGKILL: no rollback runs) leaves nothing once swept.

This is what happens to creates in flight when a node agent's container is restarted or
OOM-killed: the VMM and the relay outlive their creator. ``vmsandbox-runtime sweep`` (the node
agent runs it at start) must find all of it from what is on disk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.leaks import processes_mentioning
from tests.runtime.conftest import BundleFactory, assert_no_leaks, cri_container
from tests.runtime.support import sandbox_sockets
from tests.runtime.test_cli import cli
from vmsandbox.runtime.faults import CREATE_STEPS, KILL_AT_ENV

#: From "state" on the record says "created": the create is done but for its pid file, and the
#: container is an ordinary one (the caller deletes it, as containerd does after a failed create).
SANDBOX_STEPS = CREATE_STEPS[: CREATE_STEPS.index("state")]


def _create(root: Path, cid: str, bundle: Path) -> int:
    # Output to a file: the relay inherits create's stdio, and would hold a pipe open.
    out = root.parent / f"{root.name}-{cid}.out"
    try:
        done = cli(root, "--hypervisor", "process", "create", "--bundle", str(bundle), cid, out=out)
        if done.returncode not in (0, -9):
            print(out.read_text(errors="replace")[-2000:])  # why, shown when the test fails
        return done.returncode
    finally:
        out.unlink(missing_ok=True)


def _killed_create(root: Path, cid: str, bundle: Path, step: str) -> None:
    os.environ[KILL_AT_ENV] = step
    try:
        code = _create(root, cid, bundle)
    finally:
        del os.environ[KILL_AT_ENV]
    assert code == -9, f"create was not killed at {step}: {code}"


def _settled(root: Path) -> list[str]:
    deadline = time.monotonic() + 10
    while (left := processes_mentioning(str(root))) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("step", SANDBOX_STEPS)
def test_a_sandbox_create_killed_at_each_step_is_swept(
    root: Path,
    make_bundle: BundleFactory,
    step: str,
) -> None:
    _killed_create(root, "k1", make_bundle(["sleep", "300"]), step)
    swept = cli(root, "sweep")
    assert swept.returncode == 0, swept.stderr
    if step != "reserve" or (root / "k1").exists():
        assert "k1" in swept.stdout or "vm-" in swept.stdout, swept.stdout
    assert cli(root, "list", "-q").stdout.split() == []
    assert _settled(root) == [], f"processes outlived the sweep after a kill at {step}"
    assert sandbox_sockets(root) == []
    assert_no_leaks(root)
    assert cli(root, "sweep").stdout == "", "a second sweep finds nothing"


@pytest.mark.parametrize("step", ["disk", "create-container", "relay"])
def test_a_pod_container_create_killed_midway_is_swept_and_its_sandbox_lives_on(
    root: Path,
    make_bundle: BundleFactory,
    step: str,
) -> None:
    assert _create(root, "pod", make_bundle(["sleep", "300"])) == 0
    pod_vm = cli(root, "state", "pod").stdout
    _killed_create(root, "member", make_bundle(["sleep", "300"], annotations=cri_container("pod")), step)
    swept = cli(root, "sweep")
    assert swept.returncode == 0 and "member" in swept.stdout, swept.stdout
    assert cli(root, "list", "-q").stdout.split() == ["pod"]
    assert cli(root, "state", "pod").stdout == pod_vm, "the sandbox and its VM are untouched"
    # The sandbox still takes new members.
    assert _create(root, "again", make_bundle(["true"], annotations=cri_container("pod"))) == 0
    for cid in ("again", "pod"):
        assert cli(root, "delete", "--force", cid).returncode == 0
    assert _settled(root) == []
    assert_no_leaks(root)


def test_a_create_killed_after_its_record_is_an_ordinary_container(
    root: Path,
    make_bundle: BundleFactory,
) -> None:
    _killed_create(root, "k3", make_bundle(["sleep", "300"]), "state")
    assert cli(root, "sweep").stdout == ""
    assert cli(root, "list", "-q").stdout.split() == ["k3"]
    assert cli(root, "delete", "--force", "k3").returncode == 0
    assert _settled(root) == []
    assert_no_leaks(root)


def test_delete_force_stops_the_vm_of_a_create_killed_during_boot(
    root: Path,
    make_bundle: BundleFactory,
) -> None:
    _killed_create(root, "k2", make_bundle(["sleep", "300"]), "create-sandbox")
    assert processes_mentioning(str(root)), "the VM outlived its creator (as it would)"
    deleted = cli(root, "delete", "--force", "k2")
    assert deleted.returncode == 0, deleted.stderr
    assert _settled(root) == []
    assert_no_leaks(root)


def test_sweep_leaves_a_create_that_is_still_running_alone(
    root: Path,
    make_bundle: BundleFactory,
) -> None:
    """An id whose creator still lives is work in progress, not debris."""
    (root / "busy").mkdir(parents=True)
    (root / "busy" / "creator").write_text(f"{os.getpid()} {_start_time()}")
    assert cli(root, "sweep").stdout == ""
    assert (root / "busy").is_dir()
    (root / "busy" / "creator").unlink()
    (root / "busy").rmdir()


def _start_time() -> str:
    from vmsandbox.hypervisor.procs import start_time

    return start_time(os.getpid()) or ""
