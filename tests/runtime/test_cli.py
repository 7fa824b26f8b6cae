"""``vmsandbox-runtime`` driven the way containerd's go-runc drives runc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.leaks import processes_mentioning
from tests.runtime.conftest import BundleFactory
from tests.runtime.support import Schemas

REPO = Path(__file__).resolve().parents[2]


def cli(
    root: Path, *args: str, log: Path | None = None, out: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        VMSANDBOX_ALLOW_PROCESS_BACKEND="1",
    )
    glob = ["--root", str(root), "--hypervisor", "process"]
    if log is not None:
        glob += ["--log", str(log), "--log-format", "json"]
    cmd = [sys.executable, "-m", "vmsandbox.runtime", *glob, *args]
    if out is not None:
        # create's stdio is inherited by the relay, so it must not be a pipe we wait to close.
        with out.open("ab") as sink:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env, timeout=60
            )
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), "")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)


def state_of(root: Path, cid: str) -> dict[str, Any]:
    proc = cli(root, "state", cid)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_help_states_the_isolation_caveat() -> None:
    proc = cli(Path("/nonexistent"), "--help")
    assert proc.returncode == 0
    assert "isolated by Linux namespaces only (no VM)" in " ".join(proc.stdout.split())


def test_go_runc_style_lifecycle(
    root: Path, make_bundle: BundleFactory, schemas: Schemas, tmp_path: Path
) -> None:
    bundle = make_bundle(["sh", "-c", "echo started; trap 'exit 9' TERM; while :; do sleep 0.05; done"])
    pid_file, log, out = tmp_path / "pid", tmp_path / "runtime.log", tmp_path / "out"
    create = cli(
        root,
        "--systemd-cgroup",
        "--rootless=false",
        "create",
        "--bundle",
        str(bundle),
        "--pid-file",
        str(pid_file),
        "--no-pivot",
        "--no-new-keyring",
        "--detach",
        "--preserve-fds",
        "0",
        "c1",
        log=log,
        out=out,
    )
    assert create.returncode == 0, create.stdout
    state = state_of(root, "c1")
    assert schemas.errors("state-schema.json", state) == []
    assert state["status"] == "created" and state["bundle"] == str(bundle)
    assert pid_file.read_text() == str(state["pid"])

    assert cli(root, "start", "c1").returncode == 0
    deadline = time.monotonic() + 10
    while b"started" not in out.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "started" in out.read_text(), "container output reaches the stdio given to create"
    assert state_of(root, "c1")["status"] == "running"
    time.sleep(0.2)
    assert cli(root, "kill", "c1").returncode == 0  # default TERM
    deadline = time.monotonic() + 10
    while (state := state_of(root, "c1"))["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state["status"] == "stopped" and state["exit_code"] == 9
    assert schemas.errors("state-schema.json", state) == []

    listed = cli(root, "list", "--format", "json")
    assert [c["id"] for c in json.loads(listed.stdout)] == ["c1"]
    assert cli(root, "delete", "c1").returncode == 0
    assert cli(root, "list", "-q").stdout == ""


def test_kill_accepts_numbers_and_delete_needs_force(
    root: Path, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    assert (
        cli(root, "create", "-b", str(make_bundle(["sleep", "100"])), "c2", out=tmp_path / "o").returncode
        == 0
    )
    assert cli(root, "start", "c2").returncode == 0
    refused = cli(root, "delete", "c2")
    assert refused.returncode == 1 and "is running; stop it first or use --force" in refused.stderr
    assert cli(root, "kill", "c2", "9").returncode == 0
    bad = cli(root, "kill", "c2", "SIGNOPE")
    assert bad.returncode == 1
    assert cli(root, "delete", "--force", "c2").returncode == 0


def test_errors_name_the_step_and_reach_the_json_log(root: Path, tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    proc = cli(root, "create", "--bundle", str(tmp_path / "absent"), "c3", log=log)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"vmsandbox-runtime: bundle: {tmp_path / 'absent'} does not exist"
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"]

    assert cli(root, "create").returncode != 0  # no id (C1)
    unknown = cli(root, "state", "ghost")
    assert unknown.returncode == 1 and "'ghost' does not exist" in unknown.stderr
    assert cli(root, "start").returncode != 0  # T1
    assert cli(root, "kill").returncode != 0  # K1
    assert cli(root, "delete").returncode != 0  # D1


def test_warm_pool_from_the_cli_is_drained(
    root: Path, make_bundle: BundleFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMSANDBOX_PROCESS_POOL", "1")
    assert cli(root, "create", "-b", str(make_bundle(["true"])), "c4", out=tmp_path / "o").returncode == 0
    assert cli(root, "delete", "--force", "c4").returncode == 0
    assert len(list((root / ".vms" / ".pool").iterdir())) == 1  # an idle agent outlives the calls
    assert processes_mentioning(str(root / ".vms" / ".pool")) != []
    assert cli(root, "drain-pool").returncode == 0
    assert processes_mentioning(str(root)) == []
    assert not (root / ".vms" / ".pool").exists()


def test_the_cli_loads_no_yaml_parser_without_a_settings_file() -> None:
    """Every shim call starts this CLI: the YAML parser is loaded only to read ``--config``."""
    probe = (
        "import sys; from vmsandbox.runtime.cli import _parser, run; from vmsandbox.hypervisor import "
        "HypervisorConfig; HypervisorConfig.load(None); print('yaml' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
