"""Exec and files in a real QEMU guest (TCG here): the same guest agent code, reached over the
multiplexed virtio-serial port instead of a unix socket. One VM boot for the whole module."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.exec.conftest import exec_rootfs
from tests.leaks import processes_mentioning
from tests.qemu.conftest import guest_image, qemu_binary, vmm_user
from tests.runtime.support import base_config, write_bundle
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.streams import read_path, start_exec, write_path

__all__ = ["guest_image", "qemu_binary", "vmm_user"]
pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def qemu_box(guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runtime, str]]:
    root = Path(tempfile.mkdtemp(prefix="vx", dir="/tmp"))
    root.chmod(0o711)  # QEMU runs as the VMM user: it reaches its VM's files below
    runtime = Runtime(root=root, hypervisor="qemu", config=HypervisorConfig(guest_image_dir=guest_image))
    bundle = tmp_path_factory.mktemp("qx") / "bundle"
    exec_rootfs(bundle / "rootfs")
    config = base_config(["sleep", "3600"])
    config["root"]["readonly"] = False
    write_bundle(bundle, config, rootfs=bundle / "rootfs")
    runtime.create("qbox", bundle)
    try:
        runtime.start("qbox")
        yield runtime, "qbox"
    finally:
        runtime.delete("qbox", force=True)
        left = processes_mentioning(str(root))
        shutil.rmtree(root, ignore_errors=True)
        assert left == [], "a QEMU or relay process survived delete"


def _run(runtime: Runtime, cid: str, command: list[str]) -> tuple[bytes, bytes, int]:
    out, err = bytearray(), bytearray()
    with start_exec(runtime.agent_for(cid), cid, command) as stream:
        for channel, data in stream.output():
            (out if channel == 1 else err).extend(data)
        assert stream.exit_code is not None
        return bytes(out), bytes(err), stream.exit_code


def test_exec_in_a_qemu_guest(qemu_box: tuple[Runtime, str]) -> None:
    runtime, cid = qemu_box
    assert _run(runtime, cid, ["sh", "-c", "echo out; echo err >&2; exit 3"]) == (b"out\n", b"err\n", 3)
    assert _run(runtime, cid, ["sh", "-c", "kill -9 $$"])[2] == 137
    out, _, code = _run(runtime, cid, ["sh", "-c", "seq 1 300000"])
    assert code == 0 and out == b"".join(b"%d\n" % i for i in range(1, 300001))


def test_files_in_a_qemu_guest(qemu_box: tuple[Runtime, str]) -> None:
    runtime, cid = qemu_box
    data = os.urandom(8 * 1024 * 1024)
    write_path(runtime.agent_for(cid), cid, "/tmp/q.bin", [data])
    with read_path(runtime.agent_for(cid), cid, "/tmp/q.bin") as stream:
        back = b"".join(stream.chunks())
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert (
        _run(runtime, cid, ["md5sum", "/tmp/q.bin"])[0].split()[0].decode() == hashlib.md5(data).hexdigest()
    )
