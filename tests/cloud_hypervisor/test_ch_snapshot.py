"""Snapshot and restore through the stand-in: the VMM's state rules, version-gated restore
options, a restored VM with its own files and a reachable guest agent, and fault paths that
leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cloud_hypervisor.conftest import Workspace, http
from tests.cloud_hypervisor.test_ch_lifecycle import agent_ping
from vmsandbox.hypervisor.base import SNAPSHOT_MANIFEST, DiskSpec, HypervisorError, SnapshotManifest
from vmsandbox.hypervisor.cloud_hypervisor import CloudHypervisorDriver
from vmsandbox.hypervisor.cloud_hypervisor.errors import ApiError
from vmsandbox.hypervisor.cloud_hypervisor.layout import VmLayout


@pytest.mark.parametrize("version", ["v51.1", "v52.0", "v53.0"])
def test_snapshot_and_restore_into_a_fresh_vmm(
    workspace: Workspace, driver: CloudHypervisorDriver, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setenv("CH_STANDIN_VERSION", version)
    writable = DiskSpec(path=workspace.disk("w.img"), serial="ctr-w", readonly=False)
    source = driver.boot(workspace.spec(memory_mib=256, disks=[writable]))
    snap = workspace.root / "snap"
    try:
        manifest = driver.snapshot(source, snap)
        assert driver.paused(source), "snapshot pauses first and leaves the VM paused"
        assert {p.name for p in snap.iterdir()} == {
            "config.json",
            "state.json",
            "memory-ranges",
            SNAPSHOT_MANIFEST,
            "disk-ctr-w.img",
        }
        assert SnapshotManifest.load(snap) == manifest
        assert manifest.memory_mib == 256 and manifest.details["version"].startswith(version[1:3])
        assert manifest.root_disk == workspace.root_disk
    finally:
        driver.stop(source)

    restored = driver.restore(workspace.spec(vm_id="vm2", state_dir=workspace.root / "vm2"), snap)
    try:
        assert driver.info(restored).state == "Running"
        layout = VmLayout.of(restored)
        config = driver.info(restored).config
        # The restored VM has its own vsock socket, serial log and copy of the writable disk.
        assert config["vsock"]["socket"] == str(layout.vsock_socket)
        assert config["serial"]["file"] == str(layout.serial_log)
        disk = next(d for d in config["disks"] if d["serial"] == "ctr-w")
        assert Path(disk["path"]).parent == layout.state_dir
        with driver.connect(restored) as sock:
            agent_ping(sock)
        restore_body = json.loads(
            next(r["body"] for r in workspace.requests() if r["path"].endswith("/vm.restore"))
        )
        if version == "v51.1":
            assert "memory_restore_mode" not in restore_body and "resume" not in restore_body
            assert any(r["path"].endswith("/vm.resume") for r in workspace.requests())
        else:
            assert restore_body["memory_restore_mode"] == "OnDemand" and restore_body["resume"] is True
    finally:
        driver.stop(restored)
    assert not (workspace.root / "vm2").exists()


def test_the_vmm_state_rules(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    handle = driver.boot(workspace.spec())
    api = VmLayout.of(handle).api_socket
    try:
        target = workspace.root / "raw"
        target.mkdir()
        body = json.dumps({"destination_url": f"file://{target}"})
        status, _, reply = http(api, "PUT", "vm.snapshot", body)
        assert status == 500 and "not paused" in reply.decode(), "a running VM cannot be snapshotted"
        status, _, reply = http(api, "PUT", "vm.restore", json.dumps({"source_url": f"file://{target}"}))
        assert status == 500 and "already created" in reply.decode(), "restore needs a fresh VMM"
        driver.pause(handle)
        status, _, _ = http(api, "PUT", "vm.snapshot", json.dumps({"destination_url": "tcp://x:1"}))
        assert status == 500
        status, _, _ = http(api, "PUT", "vm.snapshot", body)
        assert status == 204 and (target / "config.json").is_file()
        with pytest.raises(HypervisorError, match="not empty"):
            driver.snapshot(handle, target)
        assert (target / "config.json").is_file(), "a refused snapshot never touches the directory"
    finally:
        driver.stop(handle)


def test_a_broken_snapshot_restores_nothing(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    handle = driver.boot(workspace.spec())
    snap = workspace.root / "snap"
    try:
        driver.snapshot(handle, snap)
    finally:
        driver.stop(handle)
    (snap / "memory-ranges").unlink()
    with pytest.raises(ApiError, match="memory-ranges"):
        driver.restore(workspace.spec(), snap)
    workspace.assert_clean()
    with pytest.raises(HypervisorError, match="not a complete snapshot"):
        driver.restore(workspace.spec(), workspace.root / "nowhere")
    workspace.assert_clean()
    manifest = SnapshotManifest.load(snap)
    manifest.model_copy(update={"hypervisor": "qemu"}).save(snap)
    with pytest.raises(HypervisorError, match="is a qemu snapshot, not a cloud-hypervisor one"):
        driver.restore(workspace.spec(), snap)
    workspace.assert_clean()
