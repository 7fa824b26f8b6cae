"""The driver's whole lifecycle against the stand-in, which runs a real guest agent behind
hybrid vsock: boot, agent ping, hot-plug, pause/resume, counters, stop, and adoption of a VM
by a fresh driver given only its handle (as the short-lived runtime CLI does)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.cloud_hypervisor.conftest import Workspace
from vmsandbox.guest.protocol import Ping, Pong, recv_reply, send_frame
from vmsandbox.hypervisor import driver_for
from vmsandbox.hypervisor.base import GUEST_AGENT_PORT, DiskSpec, VMHandle
from vmsandbox.hypervisor.cloud_hypervisor import CloudHypervisorDriver
from vmsandbox.hypervisor.cloud_hypervisor.errors import ApiError


def agent_ping(sock: socket.socket) -> None:
    sock.settimeout(10)
    send_frame(sock, Ping())
    assert isinstance(recv_reply(sock), Pong)


def guest_disk_table(ws: Workspace) -> dict[str, str]:
    """The disk table the stand-in's guest agent reads (named by VMSANDBOX_GUEST_DISKS)."""
    tables = list((ws.root / "tmp").glob("ch-standin-*/guest/disks.json"))
    assert len(tables) == 1, tables
    table: dict[str, str] = json.loads(tables[0].read_text())
    return table


@pytest.mark.usefixtures("standin_version")
def test_boot_reach_agent_hotplug_pause_stop(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    sandbox_disk = DiskSpec(path=workspace.disk("sandbox.img"), serial="ctr-sandbox")
    handle = driver.boot(workspace.spec(disks=[sandbox_disk], kernel_args=["vmsb.debug=1"]))

    assert handle.hypervisor == "cloud-hypervisor"
    assert VMHandle.load(workspace.state_dir) == handle
    assert handle.timings.vmm_start > 0 and handle.timings.vm_boot > 0 and handle.timings.agent_ready > 0
    assert driver.alive(handle)
    assert driver.info(handle).state == "Running"
    expected_disks = {"vmsb-root": str(workspace.root_disk), "ctr-sandbox": str(sandbox_disk.path)}
    assert guest_disk_table(workspace) == expected_disks

    with driver.connect(handle) as sock:
        agent_ping(sock)

    pod_disk = DiskSpec(path=workspace.disk("pod.img"), serial="ctr-pod", readonly=False)
    landed = driver.hotplug_disk(handle, pod_disk)
    assert landed is not None and landed.id == "ctr-pod" and landed.bdf.startswith("0000:00:")
    assert guest_disk_table(workspace)["ctr-pod"] == str(pod_disk.path)
    with pytest.raises(ApiError) as duplicate:
        driver.attach_disk(handle, pod_disk)
    assert duplicate.value.status == 500 and "ctr-pod" in str(duplicate.value)

    counters = driver.counters(handle)
    assert {"vmsb-root", "ctr-sandbox", "ctr-pod"} <= set(counters)

    driver.pause(handle)
    assert driver.info(handle).state == "Paused" and driver.paused(handle)
    driver.pause(handle)  # idempotent: the VMM would refuse Paused -> Paused, so nothing is sent
    assert sum(r["path"].endswith("/vm.pause") for r in workspace.requests()) == 1
    driver.resume(handle)
    assert driver.info(handle).state == "Running"
    with driver.connect(handle) as sock:
        agent_ping(sock)

    driver.stop(handle)
    assert not driver.alive(handle)
    workspace.assert_clean()
    driver.stop(handle)  # idempotent


def test_vm_config_sent_is_complete(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    container_disk = DiskSpec(path=workspace.disk("c.img"), serial="ctr-1")
    handle = driver.boot(workspace.spec(vcpus=2, memory_mib=256, disks=[container_disk], kernel_args=["a=b"]))
    try:
        create = [r for r in workspace.requests() if r["path"] == "/api/v1/vm.create"]
        assert len(create) == 1
        config = json.loads(create[0]["body"])
        assert config["payload"] == {
            "kernel": str(workspace.kernel),
            "initramfs": str(workspace.initramfs),
            "cmdline": "console=ttyS0 panic=-1 quiet a=b",
        }
        assert config["cpus"] == {"boot_vcpus": 2, "max_vcpus": 2}
        assert config["memory"] == {"size": 256 * 1024 * 1024}
        disks = [(d["serial"], d["id"], d["readonly"], d["image_type"]) for d in config["disks"]]
        assert disks == [("vmsb-root", "vmsb-root", True, "Raw"), ("ctr-1", "ctr-1", True, "Raw")]
        assert config["vsock"] == {"cid": 3, "socket": handle.endpoints["vsock_socket"]}
        assert config["serial"] == {"mode": "File", "file": str(workspace.state_dir / "serial.log")}
        assert config["console"] == {"mode": "Off"}
        assert config["rng"] == {"src": "/dev/urandom"}
        assert "null" not in create[0]["body"]
        sequence = [(r["method"], r["path"].rsplit("/", 1)[1]) for r in workspace.requests()]
        first_ping = sequence.index(("GET", "vmm.ping"))
        assert sequence[first_ping:] == [
            ("GET", "vmm.ping"),
            ("PUT", "vm.create"),
            ("GET", "vm.info"),
            ("PUT", "vm.boot"),
            ("GET", "vm.info"),
        ]
    finally:
        driver.stop(handle)
    assert [r["path"] for r in workspace.requests()][-1] == "/api/v1/vmm.shutdown"


def test_fresh_driver_adopts_vm_from_handle(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    handle = driver.boot(workspace.spec())
    adopted = driver_for("cloud-hypervisor")
    assert isinstance(adopted, CloudHypervisorDriver)
    loaded = VMHandle.load(workspace.state_dir)
    assert adopted.alive(loaded)
    with adopted.connect(loaded) as sock:
        agent_ping(sock)
    adopted.attach_disk(loaded, DiskSpec(path=workspace.disk("late.img"), serial="late"))
    assert guest_disk_table(workspace)["late"] == str(workspace.root / "late.img")
    adopted.stop(loaded)
    assert not adopted.alive(loaded)
    assert not driver.alive(handle)
    workspace.assert_clean()


@pytest.mark.usefixtures("echo_guest")
def test_forked_copy_of_the_driver_sees_the_vm_alive(
    workspace: Workspace, driver: CloudHypervisorDriver
) -> None:
    """A fork (the runtime's relay) inherits the driver but is not the VMM's parent: it must not
    mistake "not my child" for "exited" and must still reach the guest."""
    handle = driver.boot(workspace.spec())
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                if driver.alive(handle) and driver.exit_status(handle) is None:
                    with driver.connect(handle, timeout=5) as sock:
                        sock.sendall(b"x")
                        code = 0 if sock.recv(1) == b"x" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert driver.alive(handle)
    finally:
        driver.stop(handle)


def test_connect_leaves_payload_bytes_for_the_caller(
    driver: CloudHypervisorDriver, echo_vm: VMHandle
) -> None:
    """The handshake reads exactly one line: bytes the guest sends right after OK are kept."""
    with driver.connect(echo_vm) as sock:
        sock.sendall(b"first\nsecond")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received == b"first\nsecond"


def test_guest_poweroff_ends_the_vmm(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    """When the guest agent exits the guest powers off, and the VMM exits with it."""
    handle = driver.boot(workspace.spec())
    guest_handles = list((workspace.root / "tmp").glob("ch-standin-*/guest/handle.json"))
    guest = VMHandle.model_validate_json(guest_handles[0].read_text())
    os.killpg(os.getpgid(guest.vmm_pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while driver.alive(handle) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not driver.alive(handle)
    assert driver.exit_status(handle) == 0
    assert not Path(handle.endpoints["api_socket"]).exists()  # the VMM removed its API socket
    assert Path(handle.endpoints["vsock_socket"]).exists()  # but never its vsock socket
    driver.stop(handle)
    workspace.assert_clean()


def test_agent_port_constant_matches_the_standin() -> None:
    from tests.cloud_hypervisor.standin.guest import GUEST_AGENT_PORT as STANDIN_PORT

    assert STANDIN_PORT == GUEST_AGENT_PORT
