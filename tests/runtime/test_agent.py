"""The guest agent and the process backend on their own: framing, transports, namespaces, disks."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.leaks import processes_mentioning
from tests.runtime.support import base_config, make_rootfs, short_root
from vmsandbox.guest.ociruntime import hybrid_cgroups
from vmsandbox.guest.protocol import (
    MAX_FRAME,
    REQUEST,
    Attach,
    Attached,
    BlockDevice,
    ContainerInfo,
    CreateContainer,
    DestroyContainer,
    Exited,
    Failure,
    HostPath,
    Ok,
    Output,
    Ping,
    Pong,
    ProtocolError,
    Reply,
    SignalContainer,
    StartContainer,
    decode,
    recv_frame_bytes,
    recv_reply,
    send_frame,
)
from vmsandbox.guest.transport import TransportError, open_listener
from vmsandbox.hypervisor import forkserver
from vmsandbox.hypervisor.base import DiskSpec, VMHandle, VMSpec
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.process import ProcessDriver, cgroup_mounts
from vmsandbox.runtime.diskcache import make_disk

# ---- framing and transports ------------------------------------------------------------


def test_frames_round_trip_every_request() -> None:
    a, b = socket.socketpair()
    with a, b:
        requests = [
            Ping(),
            CreateContainer(container_id="c", spec={"x": [1]}, rootfs=BlockDevice(serial="s"), terminal=True),
            SignalContainer(container_id="c", signal=15),
            Attach(container_id="c", offset=7),
        ]
        for req in requests:
            send_frame(a, req)
            body = recv_frame_bytes(b)
            assert body is not None and decode(REQUEST, body) == req


def test_oversized_and_truncated_frames_are_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", MAX_FRAME + 1))
        with pytest.raises(ProtocolError, match="limit"):
            recv_frame_bytes(b)
    a, b = socket.socketpair()
    with b:
        a.sendall(struct.pack(">I", 10) + b"abc")
        a.close()
        with pytest.raises(ProtocolError, match="closed inside a frame"):
            recv_frame_bytes(b)


def test_malformed_frame_names_its_content() -> None:
    with pytest.raises(ProtocolError, match=r"malformed frame.*nope"):
        decode(REQUEST, b'{"op": "nope"}')


@pytest.mark.parametrize("spec", ["bogus", "tcp:1", "vsock:abc", "unix:"])
def test_bad_listen_specs(spec: str) -> None:
    with pytest.raises(TransportError):
        open_listener(spec)


def test_unix_listener_serves_streams(tmp_path: Path) -> None:
    listener = open_listener(f"unix:{tmp_path / 'a.sock'}")
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(tmp_path / "a.sock"))
        server = listener.accept()
        with client, contextlib.closing(server):  # the agent's C socket type is no context manager
            assert server.type == socket.SOCK_STREAM
            assert not os.get_inheritable(server.fileno())  # never leaked into runc and containers
            client.sendall(b"x")
            assert server.recv(1) == b"x"
    finally:
        listener.close()
    assert not (tmp_path / "a.sock").exists()


# ---- the process backend ---------------------------------------------------------------


@pytest.fixture
def driver() -> ProcessDriver:
    return ProcessDriver(HypervisorConfig())


@pytest.fixture
def vm(driver: ProcessDriver, tmp_path: Path) -> Iterator[VMHandle]:
    root = short_root()
    image = make_disk(make_rootfs(tmp_path / "diskroot"), tmp_path / "disk.ext4")
    spec = VMSpec(vm_id="vm-test", state_dir=root / "vm", disks=[DiskSpec(path=image, serial="boot-disk")])
    handle = driver.boot(spec)
    yield handle
    driver.stop(handle)
    assert not driver.alive(handle)
    parent = handle.endpoints["cgroup_parent"].lstrip("/")
    assert [m for m in cgroup_mounts() if (m / parent).exists()] == []
    assert not spec.state_dir.exists()
    assert processes_mentioning(str(root)) == []
    forkserver.stop(root)
    root.rmdir()


def call(driver: ProcessDriver, vm: VMHandle, request: object) -> Reply:
    with driver.connect(vm) as sock:
        send_frame(sock, request)  # type: ignore[arg-type]
        return recv_reply(sock)


def run_to_exit(driver: ProcessDriver, vm: VMHandle, cid: str) -> tuple[bytes, int]:
    """Start ``cid`` and collect its output and status through an attach stream."""
    stream = driver.connect(vm)
    with stream:
        send_frame(stream, Attach(container_id=cid))
        assert isinstance(recv_reply(stream), Attached)
        assert isinstance(call(driver, vm, StartContainer(container_id=cid)), ContainerInfo)
        out = b""
        while True:
            frame = recv_reply(stream)
            if isinstance(frame, Output):
                out += frame.raw()
            else:
                assert isinstance(frame, Exited)
                return out, frame.exit_code


def test_boot_ping_and_namespaces(driver: ProcessDriver, vm: VMHandle) -> None:
    assert VMHandle.load(vm.state_dir) == vm
    assert vm.timings.vm_boot > 0
    pong = call(driver, vm, Ping())
    assert isinstance(pong, Pong) and pong.agent_pid == 1  # init of its own PID namespace
    # The agent is the child unshare forked: it sits in new mount, pid, uts and ipc namespaces.
    agent = int(Path(f"/proc/{vm.vmm_pid}/task/{vm.vmm_pid}/children").read_text().split()[0])
    for ns in ("mnt", "pid", "uts", "ipc"):
        assert os.readlink(f"/proc/{agent}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert os.readlink(f"/proc/{agent}/ns/net") == os.readlink("/proc/self/ns/net")  # namespaces only
    # Many concurrent connections.
    socks = [driver.connect(vm) for _ in range(4)]
    for s in socks:
        send_frame(s, Ping())
    assert all(isinstance(recv_reply(s), Pong) for s in socks)
    for s in socks:
        s.close()


def test_block_device_from_guest_disks_table(driver: ProcessDriver, vm: VMHandle, tmp_path: Path) -> None:
    """The stand-in contract: serial -> image in VMSANDBOX_GUEST_DISKS, unpacked with debugfs."""
    spec = base_config(["sh", "-c", "cat /marker; ls /bin/busybox"])
    spec["root"]["path"] = "/ignored"
    created = call(
        driver,
        vm,
        CreateContainer(container_id="fromdisk", spec=spec, rootfs=BlockDevice(serial="boot-disk")),
    )
    assert isinstance(created, ContainerInfo), created
    # Hot-plug a second disk with different content, as attach_disk does for pod containers.
    src = make_rootfs(tmp_path / "second")
    (src / "marker").write_text("second disk\n")
    driver.attach_disk(vm, DiskSpec(path=make_disk(src, tmp_path / "second.ext4"), serial="hot-disk"))
    assert json.loads(Path(vm.endpoints["disks"]).read_text())["hot-disk"].endswith("second.ext4")
    hot = CreateContainer(container_id="hot", spec=spec, rootfs=BlockDevice(serial="hot-disk"))
    assert isinstance(call(driver, vm, hot), ContainerInfo)
    out, code = run_to_exit(driver, vm, "hot")
    assert (out, code) == (b"second disk\n/bin/busybox\n", 0)
    for cid in ("fromdisk", "hot"):
        assert isinstance(call(driver, vm, DestroyContainer(container_id=cid)), Ok)


def test_guest_state_rules_and_output_replay(driver: ProcessDriver, vm: VMHandle, tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "r")
    spec = base_config(["sh", "-c", "echo one; echo two >&2; exit 4"])
    req = CreateContainer(container_id="g1", spec=spec, rootfs=HostPath(path=str(rootfs)))
    assert isinstance(call(driver, vm, req), ContainerInfo)
    dup = call(driver, vm, req)
    assert isinstance(dup, Failure) and "already exists" in dup.detail
    out, code = run_to_exit(driver, vm, "g1")
    assert code == 4 and sorted(out.split()) == [b"one", b"two"]
    # A late attacher (a restarted relay) still gets the whole output, then the status.
    with driver.connect(vm) as stream:
        send_frame(stream, Attach(container_id="g1"))
        frames = [recv_reply(stream) for _ in range(4)]
    assert isinstance(frames[0], Attached) and isinstance(frames[-1], Exited) and frames[-1].exit_code == 4
    assert sorted(f.raw() for f in frames if isinstance(f, Output)) == [b"one\n", b"two\n"]
    for bad in (StartContainer(container_id="g1"), SignalContainer(container_id="g1", signal=9)):
        failure = call(driver, vm, bad)
        assert isinstance(failure, Failure) and (failure.step == "status" and "is stopped" in failure.detail)
    assert isinstance(call(driver, vm, DestroyContainer(container_id="g1")), Ok)
    missing = call(driver, vm, DestroyContainer(container_id="g1"))
    assert isinstance(missing, Failure) and "no container 'g1'" in missing.detail


def test_oci_runtime_auto_falls_back_with_a_logged_reason(
    driver: ProcessDriver, vm: VMHandle, tmp_path: Path
) -> None:
    rootfs = make_rootfs(tmp_path / "r")
    req = CreateContainer(container_id="o1", spec=base_config(["true"]), rootfs=HostPath(path=str(rootfs)))
    assert isinstance(call(driver, vm, req), ContainerInfo)
    pong = call(driver, vm, Ping())
    assert isinstance(pong, Pong)
    log = (vm.state_dir / "agent.log").read_text()
    if pong.oci_runtime == "auto(runc)":
        reason = hybrid_cgroups()
        expected = reason if reason is not None else "crun create:"
        assert f"using runc instead of crun: {expected}" in log
    else:
        assert pong.oci_runtime == "auto(crun)"
    assert run_to_exit(driver, vm, "o1")[1] == 0
    call(driver, vm, DestroyContainer(container_id="o1"))


def test_explicit_runc(tmp_path: Path) -> None:
    root = short_root()
    driver = ProcessDriver(HypervisorConfig(oci_runtime="runc"))
    handle = driver.boot(VMSpec(vm_id="vm-runc", state_dir=root / "vm"))
    try:
        pong = call(driver, handle, Ping())
        assert isinstance(pong, Pong) and pong.oci_runtime == "runc"
    finally:
        driver.stop(handle)
        forkserver.stop(root)
        root.rmdir()


def test_warm_pool_adopts_an_idle_agent(tmp_path: Path) -> None:
    root = short_root()
    vms = root / ".vms"
    driver = ProcessDriver(HypervisorConfig(), pool_size=1)
    handles: list[VMHandle] = []
    try:
        handles.append(driver.boot(VMSpec(vm_id="vm-a", state_dir=vms / "vm-a")))
        assert handles[0].timings.vm_boot > 0  # nothing to adopt yet: a cold boot, then a refill
        pooled = [p.name for p in (vms / ".pool").iterdir()]
        assert len(pooled) == 1
        deadline = time.monotonic() + 30
        while not (vms / ".pool" / pooled[0] / "agent.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # an agent is adopted only once it listens
        handles.append(driver.boot(VMSpec(vm_id="vm-b", state_dir=vms / "vm-b")))
        second = handles[1]
        assert second.timings.vm_boot == 0 and second.vmm_pid != handles[0].vmm_pid
        assert not (vms / ".pool" / pooled[0]).exists()  # renamed into vm-b
        # The adopted agent works from its new directory: a container runs, output comes back.
        rootfs = make_rootfs(tmp_path / "r")
        spec = base_config(["echo", "adopted"])
        req = CreateContainer(container_id="a1", spec=spec, rootfs=HostPath(path=str(rootfs)))
        assert isinstance(call(driver, second, req), ContainerInfo)
        assert run_to_exit(driver, second, "a1") == (b"adopted\n", 0)
        assert (vms / "vm-b" / "guest" / "containers" / "a1" / "bundle" / "config.json").exists()
        call(driver, second, DestroyContainer(container_id="a1"))
    finally:
        for handle in handles:
            driver.stop(handle)
        ProcessDriver.drain_pool(vms)
    assert processes_mentioning(str(root)) == []
    assert list(vms.iterdir()) == []
    vms.rmdir()
    root.rmdir()


def test_explicit_crun_reports_its_own_refusal(tmp_path: Path) -> None:
    """On a hybrid-cgroup host crun's own words reach the caller, naming the runtime."""
    if hybrid_cgroups() is None:
        pytest.skip("this host's cgroups are not hybrid: crun is expected to work")
    root = short_root()
    driver = ProcessDriver(HypervisorConfig(oci_runtime="crun"))
    handle = driver.boot(VMSpec(vm_id="vm-crun", state_dir=root / "vm"))
    try:
        rootfs = make_rootfs(tmp_path / "r")
        req = CreateContainer(container_id="c", spec=base_config(["true"]), rootfs=HostPath(path=str(rootfs)))
        failure = call(driver, handle, req)
        assert isinstance(failure, Failure) and failure.step == "create"
        assert failure.detail.startswith("crun create:") and "hybrid" in failure.detail
    finally:
        driver.stop(handle)
        forkserver.stop(root)
        root.rmdir()
