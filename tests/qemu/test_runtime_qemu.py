"""``vmsandbox-runtime --hypervisor qemu``: busybox containers inside real QEMU guests (TCG here).

Every step goes through the CLI, as containerd's shim would call it: each invocation is a new
process that only has the state on disk, so this also proves the driver works from a handle.
VM boots are few on purpose: one pod VM serves most cases, one single-container sandbox, and
one guest that powers off before its agent is up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.leaks import processes_mentioning, sockets_under
from tests.qemu.test_driver import process_ids
from tests.runtime.support import base_config, make_rootfs, write_bundle
from vmsandbox.hypervisor.qemu.probe import probe_initramfs
from vmsandbox.hypervisor.qemu.qmp import QMPClient
from vmsandbox.hypervisor.vmmuser import resolve

pytestmark = pytest.mark.vm

SANDBOX = {"io.kubernetes.cri.container-type": "sandbox"}
#: A TCG guest is slow; containers still finish in seconds once it is up.
STOP_TIMEOUT = 90.0


def member_of(sandbox_id: str) -> dict[str, str]:
    return {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox_id}


class Cli:
    """Runs ``vmsandbox-runtime --hypervisor qemu --root ROOT ...`` as separate processes."""

    def __init__(self, root: Path, image_dir: Path, logs: Path) -> None:
        self.root = root
        self.logs = logs
        self.env = dict(os.environ, VMSANDBOX_GUEST_IMAGE_DIR=str(image_dir))
        script = shutil.which("vmsandbox-runtime")
        self.argv = [script] if script else [sys.executable, "-m", "vmsandbox.runtime"]
        self.argv += ["--hypervisor", "qemu", "--root", str(root)]
        self._n = 0

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> tuple[int, str, str]:
        """Files, not pipes, for output: a created container's relay keeps them open."""
        self._n += 1
        out, err = self.logs / f"{self._n}.out", self.logs / f"{self._n}.err"
        with out.open("wb") as o, err.open("wb") as e:
            code = subprocess.run(
                [*self.argv, *args],
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
                env=self.env,
                timeout=timeout,
            ).returncode
        result = (code, out.read_text(), err.read_text())
        if check:
            assert code == 0, f"{' '.join(args)} failed: {result[2]}"
        return result

    def create(self, cid: str, bundle: Path) -> Path:
        """Returns the file the container's stdout goes to."""
        self.run("create", "--bundle", str(bundle), cid)
        return self.logs / f"{self._n}.out"

    def state(self, cid: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.run("state", cid)[1])
        return doc

    def wait_stopped(self, cid: str) -> dict[str, Any]:
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            state = self.state(cid)
            if state["status"] == "stopped":
                return state
            assert time.monotonic() < deadline, f"{cid} still {state['status']}"
            time.sleep(0.2)


def bundle(
    path: Path,
    rootfs: Path,
    args: list[str],
    annotations: dict[str, str] | None = None,
    *,
    writable: bool = False,
) -> Path:
    config = base_config(args)
    config["root"]["readonly"] = not writable
    if annotations:
        config["annotations"] = annotations
    return write_bundle(path, config, rootfs=rootfs)


def start_pod(cli: Cli, rootfs: Path, tmp_path: Path, cid: str) -> None:
    """A pod sandbox's VM, started, its own process asleep: members join it with :func:`member_of`."""
    cli.create(cid, bundle(tmp_path / cid, rootfs, ["sleep", "3600"], SANDBOX))
    cli.run("start", cid)


def assert_nothing_left(root: Path) -> None:
    assert processes_mentioning(str(root)) == [], "a QEMU, mux proxy or relay process survived"
    assert sockets_under(root) == [], "sockets left under the runtime root"


@pytest.fixture
def env(guest_image: Path, tmp_path: Path) -> Iterator[tuple[Cli, Path]]:
    root = Path(tempfile.mkdtemp(prefix="vq", dir="/tmp"))
    root.chmod(0o711)  # the VMM user reaches its VM's files below
    logs = tmp_path / "logs"
    logs.mkdir()
    rootfs = make_rootfs(tmp_path / "rootfs")
    cli = Cli(root, guest_image, logs)
    try:
        yield cli, rootfs
    finally:
        for line in cli.run("list", "--quiet", check=False)[1].split():
            cli.run("delete", "--force", line, check=False)
        leftover = processes_mentioning(str(root))
        for line in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":")[0]), 9)
        shutil.rmtree(root, ignore_errors=True)
        assert leftover == [], "processes survived delete --force"


def test_pod_lifecycle_in_one_qemu_guest(env: tuple[Cli, Path], tmp_path: Path) -> None:
    """A pod sandbox VM; members with output, exit 0 and 3, a kill; delete leaves nothing."""
    cli, rootfs = env
    cli.create("pod", bundle(tmp_path / "pod", rootfs, ["sleep", "3600"], SANDBOX))
    sandbox = cli.state("pod")
    assert sandbox["status"] == "created" and sandbox["hypervisor"] == "qemu"
    timings = sandbox["timings"]
    assert timings["vmmStart"] > 0 and timings["vmBoot"] > 0 and timings["agentReady"] > 0
    vmm_pid = sandbox["vm"]["vmm_pid"]
    assert any(
        line.startswith(f"{vmm_pid}:") and "qemu-system" in line for line in processes_mentioning("qemu")
    )
    user = resolve("")
    assert user is not None and process_ids(vmm_pid) == (user.uid, user.gid), "QEMU runs as the VMM user"
    cli.run("start", "pod")
    assert cli.state("pod")["status"] == "running"

    # Two more containers in the same VM, each on its own hot-plugged disk.
    out = cli.create(
        "hello",
        bundle(tmp_path / "hello", rootfs, ["sh", "-c", "echo hello from the guest"], member_of("pod")),
    )
    three = cli.create("three", bundle(tmp_path / "three", rootfs, ["sh", "-c", "exit 3"], member_of("pod")))
    for cid in ("hello", "three"):
        state = cli.state(cid)
        assert state["status"] == "created"
        assert state["vm"]["vmm_pid"] == vmm_pid, "a pod container joins the sandbox's VM"
        assert state["timings"]["vmBoot"] == 0
    cli.run("start", "hello")
    cli.run("start", "three")
    assert cli.wait_stopped("hello")["exit_code"] == 0
    assert cli.wait_stopped("three")["exit_code"] == 3
    assert out.read_text() == "hello from the guest\n"
    assert three.read_text() == ""

    cli.create("sleeper", bundle(tmp_path / "sleeper", rootfs, ["sleep", "1000"], member_of("pod")))
    cli.run("start", "sleeper")
    assert cli.state("sleeper")["status"] == "running"
    cli.run("kill", "sleeper", "KILL")
    assert cli.wait_stopped("sleeper")["exit_code"] == 137

    for cid in ("hello", "three", "sleeper"):
        cli.run("delete", cid)
    cli.run("kill", "pod", "KILL")
    assert cli.wait_stopped("pod")["exit_code"] == 137
    cli.run("delete", "pod")
    assert cli.run("list", "--quiet")[1].split() == []
    assert_nothing_left(cli.root)


def test_twenty_pod_containers_one_after_another_in_one_qemu_guest(
    env: tuple[Cli, Path], tmp_path: Path
) -> None:
    """More containers than hot-plug ports: each delete unplugs its disk and frees the slot."""
    cli, rootfs = env
    start_pod(cli, rootfs, tmp_path, "pod20")
    for i in range(20):
        cid = f"m{i}"
        out = cli.create(
            cid, bundle(tmp_path / cid, rootfs, ["sh", "-c", f"echo member {i}"], member_of("pod20"))
        )
        cli.run("start", cid)
        assert cli.wait_stopped(cid)["exit_code"] == 0
        assert out.read_text() == f"member {i}\n"
        cli.run("delete", cid)
    with QMPClient.connect(Path(cli.state("pod20")["vm"]["endpoints"]["qmp"])) as qmp:
        blocks = [n.get("node-name") for n in qmp.execute("query-named-block-nodes")]
    assert not [n for n in blocks if str(n).startswith("hp-")], f"hot-plugged disks left attached: {blocks}"
    cli.run("kill", "pod20", "KILL")
    cli.wait_stopped("pod20")
    cli.run("delete", "pod20")
    assert_nothing_left(cli.root)


def _disk_of(root: Path, cid: str) -> Path:
    return Path(json.loads((root / cid / "state.json").read_text())["disk_image"])


def test_one_shared_disk_per_image_across_vms_and_writes_stay_in_their_container(
    env: tuple[Cli, Path], tmp_path: Path
) -> None:
    """Two VMs and two pod members on one read-only disk; each container writes to its own overlay."""
    cli, rootfs = env
    start_pod(cli, rootfs, tmp_path, "spod")
    disk = _disk_of(cli.root, "spod")
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    script = "echo tenant > /bin/note && rm /bin/cat && chmod 0700 /bin && cat /bin/note"
    writer = bundle(tmp_path / "w", rootfs, ["sh", "-c", script], member_of("spod"), writable=True)
    out = cli.create("writer", writer)
    cli.run("start", "writer")
    assert cli.wait_stopped("writer")["exit_code"] == 0
    assert out.read_text() == "tenant\n"
    look = "ls /bin/note /bin/cat 2>&1; /bin/busybox true && echo busybox-intact"
    seen = cli.create(
        "reader", bundle(tmp_path / "r", rootfs, ["sh", "-c", look], member_of("spod"), writable=True)
    )
    other = cli.create("other", bundle(tmp_path / "o", rootfs, ["sh", "-c", look], writable=True))  # 2nd VM
    cli.run("start", "reader")
    cli.run("start", "other")
    for cid, got in (("reader", seen), ("other", other)):
        assert cli.wait_stopped(cid)["exit_code"] == 0
        text = got.read_text()
        assert "/bin/note: No such file" in text and "/bin/cat\n" in text and "busybox-intact" in text, text
    assert {_disk_of(cli.root, c) for c in ("writer", "reader", "other")} == {disk}
    assert disk.parent == cli.root / ".disks" and disk.stat().st_mode & 0o222 == 0
    for cid in ("writer", "reader", "other"):
        cli.run("delete", cid)
    cli.run("kill", "spod", "KILL")
    cli.wait_stopped("spod")
    cli.run("delete", "spod")
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    cached = [p.name for p in (cli.root / ".disks").iterdir() if not p.name.startswith(".")]
    assert cached == [disk.name]
    assert_nothing_left(cli.root)


def test_single_container_sandbox_exit_code_and_delete(env: tuple[Cli, Path], tmp_path: Path) -> None:
    cli, rootfs = env
    out = cli.create("solo", bundle(tmp_path / "solo", rootfs, ["sh", "-c", "echo solo; exit 3"]))
    assert cli.state("solo")["status"] == "created"
    cli.run("start", "solo")
    stopped = cli.wait_stopped("solo")
    assert stopped["exit_code"] == 3
    assert out.read_text() == "solo\n"
    # The guest mounts cgroup v2 alone, so crun, which auto prefers, must have made the container.
    consoles = [path.read_text(errors="replace") for path in cli.root.rglob("console.log")]
    assert consoles, "the VM left no console log"
    assert not any("instead of crun" in text for text in consoles), "the guest fell back to runc"
    cli.run("delete", "solo")
    assert_nothing_left(cli.root)


def test_guest_without_a_working_agent_fails_create_clearly(
    guest_image: Path, tmp_path: Path, env: tuple[Cli, Path], request: pytest.FixtureRequest
) -> None:
    """The image's kernel and root disk with an init that powers off, as a dying agent makes it."""
    cli, rootfs = env
    broken = Path(tempfile.mkdtemp(prefix="vqimg", dir="/tmp"))  # reachable by the VMM user
    broken.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(broken, ignore_errors=True))
    for name in ("vmlinuz", "rootfs.img"):
        (broken / name).symlink_to(guest_image / name)
    (broken / "initramfs.img").write_bytes(
        probe_initramfs(b"vmsandbox-init: guest agent exited with status 1; powering off\n")
    )
    cli.env["VMSANDBOX_GUEST_IMAGE_DIR"] = str(broken)
    started = time.monotonic()
    code, _, err = cli.run(
        "create", "--bundle", str(bundle(tmp_path / "b", rootfs, ["true"])), "doomed", check=False
    )
    assert code != 0
    assert time.monotonic() - started < 120
    assert "before the guest agent was ready" in err
    assert "guest agent exited with status 1" in err
    assert cli.run("list", "--quiet")[1].split() == []
    assert_nothing_left(cli.root)
