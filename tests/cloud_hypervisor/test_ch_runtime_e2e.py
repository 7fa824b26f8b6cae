"""End to end: ``vmsandbox-runtime --hypervisor cloud-hypervisor`` runs a busybox container
through the Cloud Hypervisor driver against the stand-in, which bridges hybrid vsock to a real
guest agent; the container's root filesystem travels as an ext4 disk found by its serial."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cloud_hypervisor.conftest import Workspace
from tests.cloud_hypervisor.standin.kernel_image import fake_bzimage
from tests.runtime.support import base_config, leftovers, write_bundle
from tests.tools import require_tools


def runtime_command() -> list[str]:
    installed = shutil.which("vmsandbox-runtime")
    return [installed] if installed else [sys.executable, "-m", "vmsandbox.runtime"]


@pytest.fixture
def guest_images(workspace: Workspace) -> Path:
    """What the runtime boots: the stand-in checks the kernel header and that the files exist."""
    images = workspace.root / "guest"
    images.mkdir()
    fake_bzimage(images / "vmlinuz")
    (images / "initramfs.img").write_bytes(b"\0" * 1024)
    (images / "rootfs.img").write_bytes(b"\0" * 65536)
    return images


def test_busybox_lifecycle_through_cloud_hypervisor(workspace: Workspace, guest_images: Path) -> None:
    require_tools("runc", "unshare", "mkfs.ext4", "debugfs")
    root = workspace.root / "rt"
    config = base_config(["sh", "-c", "echo hello-from-the-vm; exit 3"])
    config["annotations"] = {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.vmsandbox.vm.vcpus": "2",
        "io.vmsandbox.vm.memory-mib": "384",
    }
    bundle = write_bundle(workspace.root / "bundle", config)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["VMSANDBOX_GUEST_IMAGE_DIR"] = str(guest_images)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)
    base = [*runtime_command(), "--root", str(root), "--hypervisor", "cloud-hypervisor"]

    def run(*args: str) -> str:
        # Files, not pipes: the container's relay outlives `create` and would hold a pipe open.
        out, err = workspace.root / "cli.out", workspace.root / "cli.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.run(
                [*base, *args], env=env, stdout=stdout, stderr=stderr, timeout=120, check=False
            )
        assert proc.returncode == 0, f"{args[0]} failed: {err.read_text()}"
        return out.read_text()

    def state() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(run("state", "ctr"))
        return doc

    pid_file = workspace.root / "ctr.pid"
    run("create", "--bundle", str(bundle), "--pid-file", str(pid_file), "ctr")
    created = state()
    assert created["status"] == "created" and created["hypervisor"] == "cloud-hypervisor"
    assert pid_file.read_text() == str(created["pid"])
    vm = created["vm"]
    assert Path(vm["endpoints"]["api_socket"]).exists() and Path(vm["endpoints"]["vsock_socket"]).exists()
    assert all(created["timings"][key] > 0 for key in ("vmmStart", "vmBoot", "agentReady", "containerCreate"))
    create_bodies = [r for r in workspace.requests() if r["path"] == "/api/v1/vm.create"]
    vm_config = json.loads(create_bodies[0]["body"])
    assert vm_config["cpus"]["boot_vcpus"] == 2, "the VM is sized from the sandbox's annotations"
    assert vm_config["memory"]["size"] == 384 * 1024 * 1024
    disks = vm_config["disks"]
    assert [d["serial"] for d in disks][:1] == ["vmsb-root"] and len(disks) == 2  # guest root + container
    assert disks[1]["readonly"] is True  # the image's shared disk: the guest overlays it

    run("start", "ctr")
    deadline = time.monotonic() + 30
    while (current := state())["status"] != "stopped":
        assert time.monotonic() < deadline, current
        time.sleep(0.1)
    assert current["exit_code"] == 3
    assert Path(current["log_path"]).read_text() == "hello-from-the-vm\n"

    run("delete", "ctr")
    assert leftovers(root) == []  # all but the image's shared disk, kept for the next container
    assert [r["path"] for r in workspace.requests()][-1] == "/api/v1/vmm.shutdown"
