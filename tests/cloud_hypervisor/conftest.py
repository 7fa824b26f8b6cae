"""Fixtures for the Cloud Hypervisor driver tests: the stand-in on PATH, a short workspace,
and a leak check after every test (no process, socket or directory may survive)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import site
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cloud_hypervisor.standin import openapi
from tests.cloud_hypervisor.standin.kernel_image import fake_bzimage
from tests.leaks import pids_mentioning, processes_mentioning, sockets_under
from tests.tools import missing
from tests.vmm_user import ensure_vmm_user
from vmsandbox.hypervisor.base import VMHandle, VMSpec
from vmsandbox.hypervisor.cloud_hypervisor import CloudHypervisorDriver, Timeouts
from vmsandbox.hypervisor.config import HypervisorConfig

STANDIN_DIR = Path(__file__).resolve().parent / "standin"
STANDIN_BINARY = STANDIN_DIR / "cloud-hypervisor"


def openapi_spec() -> Path:
    """Cloud Hypervisor's OpenAPI document: the tests skip without it, or fail where
    ``VMSANDBOX_REQUIRE_TOOLS`` promises it."""
    path = openapi.spec_path()
    if not path.is_file():
        missing(f"Cloud Hypervisor OpenAPI document not found at {path} (set {openapi.ENV_SPEC})")
    return path


def http(
    api_socket: Path, method: str, endpoint: str, body: str | bytes | None = None, extra_headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange on a fresh connection: the bytes exactly as given, nothing added."""
    payload = body.encode() if isinstance(body, str) else body
    head = f"{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}"
    if payload is not None:
        head += f"Content-Length: {len(payload)}\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(api_socket))
        sock.sendall((head + "\r\n").encode() + (payload or b""))
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body; the body is read by Content-Length only (none when absent)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split(" ")[1]), headers, rest[:length]


#: Who the stand-in runs as when it boots a guest: its emulated guest is the process backend, a
#: namespaced host process that needs root. test_ch_vmm_user.py starts it as the VMM user.
STANDIN_USER = "root"


@dataclass
class Workspace:
    """One test's files; short paths so every socket fits in AF_UNIX."""

    root: Path
    kernel: Path
    initramfs: Path
    root_disk: Path
    record: Path

    @property
    def state_dir(self) -> Path:
        return self.root / "vm"

    def disk(self, name: str, size: int = 65536) -> Path:
        path = self.root / name
        path.write_bytes(b"\0" * size)
        return path

    def spec(self, **overrides: Any) -> VMSpec:
        values: dict[str, Any] = {
            "vm_id": "vm1",
            "state_dir": self.state_dir,
            "kernel": self.kernel,
            "initramfs": self.initramfs,
            "root_disk": self.root_disk,
            "agent_timeout": 30.0,
        }
        values.update(overrides)
        return VMSpec(**values)

    def requests(self) -> list[dict[str, Any]]:
        """Every request the stand-in received, in order."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def leftovers(self) -> dict[str, list[str]]:
        """What a finished VM must not leave behind."""
        return {
            "processes": processes_mentioning(str(self.root)),
            "sockets": [str(p) for p in sockets_under(self.root)],
            "standin workdirs": [str(p) for p in (self.root / "tmp").glob("ch-standin-*")],
            "state dir": [str(self.state_dir)] if self.state_dir.exists() else [],
        }

    def assert_clean(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = {kind: items for kind, items in self.leftovers().items() if items}
            if not left:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"leaked after the test: {left}")
            time.sleep(0.05)


@pytest.fixture
def workspace(monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    root = Path(tempfile.mkdtemp(prefix="chs", dir="/tmp"))
    (root / "tmp").mkdir()
    root.chmod(0o711)  # the stand-in runs as the VMM user, as the real VMM does
    user = ensure_vmm_user()
    os.chown(root / "tmp", user.uid, user.gid)  # its own scratch space (the emulated guest's files)
    ws = Workspace(
        root=root,
        kernel=fake_bzimage(root / "vmlinuz"),
        initramfs=root / "initramfs.img",
        root_disk=root / "rootfs.img",
        record=root / "requests.jsonl",
    )
    ws.initramfs.write_bytes(b"\0" * 1024)
    ws.root_disk.write_bytes(b"\0" * 65536)
    ws.record.touch()
    os.chown(ws.record, user.uid, user.gid)  # the stand-in records the requests it receives
    monkeypatch.setenv("PATH", f"{STANDIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("TMPDIR", str(root / "tmp"))
    # The stand-in runs as the VMM user, who may not reach this interpreter (under a private
    # home): its packages then come from here, to whichever python3 it finds.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([*site.getsitepackages(), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("CH_STANDIN_RECORD", str(ws.record))
    monkeypatch.setenv("VMSANDBOX_VMM_USER", STANDIN_USER)
    for knob in ("CH_STANDIN_VERSION", "CH_STANDIN_FAULTS", "CH_STANDIN_GUEST"):
        monkeypatch.delenv(knob, raising=False)
    try:
        yield ws
    finally:
        try:
            ws.assert_clean()
        finally:
            for pid in pids_mentioning(str(root)):
                with contextlib.suppress(OSError):
                    os.killpg(pid, 9)
            shutil.rmtree(root, ignore_errors=True)


#: The releases whose answers differ most (v51 sends nulls and cannot bind over a stale socket,
#: v53 omits unset fields): a test that must hold for every release runs against both.
STANDIN_VERSIONS = ("v51.1", "v53.0")


@pytest.fixture(params=STANDIN_VERSIONS)
def standin_version(
    request: pytest.FixtureRequest, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The release the stand-in emulates, set after ``workspace`` has cleared the knob."""
    version: str = request.param
    monkeypatch.setenv("CH_STANDIN_VERSION", version)
    return version


@pytest.fixture
def echo_guest(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in's guest agent echoes what it reads, for tests that only need a live guest."""
    monkeypatch.setenv("CH_STANDIN_GUEST", "echo")


@pytest.fixture
def driver() -> CloudHypervisorDriver:
    config = HypervisorConfig(cloud_hypervisor_binary="cloud-hypervisor", vmm_user=STANDIN_USER)
    return CloudHypervisorDriver(config)


@pytest.fixture
def echo_vm(workspace: Workspace, driver: CloudHypervisorDriver, echo_guest: None) -> Iterator[VMHandle]:
    """A VM of ``workspace``'s spec booted with the echo guest, stopped after the test."""
    handle = driver.boot(workspace.spec())
    try:
        yield handle
    finally:
        driver.stop(handle)


def fast_driver(**timeouts: float) -> CloudHypervisorDriver:
    """A driver with shortened deadlines, for fault tests that wait for one to pass."""
    return CloudHypervisorDriver(HypervisorConfig(vmm_user=STANDIN_USER), Timeouts(**timeouts))
