"""Every fault the driver must survive: each raises a typed error naming the stage, with the
server's or the process's own words, and leaves no VMM process, socket or state behind."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import TypeVar

import pytest

from tests.cloud_hypervisor.conftest import Workspace, fast_driver
from vmsandbox.hypervisor.base import HypervisorError, VMGone, VMHandle
from vmsandbox.hypervisor.cloud_hypervisor import CloudHypervisorDriver, Timeouts
from vmsandbox.hypervisor.cloud_hypervisor.errors import (
    AgentUnreachable,
    ApiError,
    VmmDied,
    VmmExited,
    VmmLaunchError,
    VmmNotReady,
)
from vmsandbox.hypervisor.config import HypervisorConfig

E = TypeVar("E", bound=BaseException)


def _boot_faulty(
    monkeypatch: pytest.MonkeyPatch,
    driver: CloudHypervisorDriver,
    workspace: Workspace,
    fault: str,
    error: type[E],
) -> pytest.ExceptionInfo[E]:
    """A boot against the stand-in told to inject ``fault``: what the driver raised, an ``error``."""
    monkeypatch.setenv("CH_STANDIN_FAULTS", fault)
    with pytest.raises(error) as raised:
        driver.boot(workspace.spec())
    return raised


def test_binary_missing(workspace: Workspace) -> None:
    for binary in ("/nonexistent/cloud-hypervisor", "cloud-hypervisor-not-installed"):
        driver = CloudHypervisorDriver(HypervisorConfig(cloud_hypervisor_binary=binary))
        with pytest.raises(VmmLaunchError) as raised:
            driver.boot(workspace.spec())
        assert binary in str(raised.value)
        assert "no such file" in str(raised.value) or "not found on PATH" in str(raised.value)
        workspace.assert_clean()


def test_binary_not_executable(workspace: Workspace) -> None:
    binary = workspace.root / "cloud-hypervisor"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o644)
    driver = CloudHypervisorDriver(HypervisorConfig(cloud_hypervisor_binary=str(binary)))
    with pytest.raises(VmmLaunchError, match="not an executable file"):
        driver.boot(workspace.spec())
    workspace.assert_clean()


def test_vmm_exits_before_ping(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    raised = _boot_faulty(monkeypatch, fast_driver(), workspace, "exit-before-ping", VmmExited)
    assert raised.value.returncode == 1
    message = str(raised.value)
    assert message.startswith("cloud-hypervisor vmm.ping: VMM process")
    assert "exited with status 1" in message and "exit-before-ping" in message  # the VMM log's words
    workspace.assert_clean()


def test_ping_never_answers(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CH_STANDIN_FAULTS", "never-answer-ping")
    started = time.monotonic()
    with pytest.raises(VmmNotReady) as raised:
        fast_driver(ready=1.5, call=0.3, shutdown=0.5, exit_wait=0.5).boot(workspace.spec())
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 10
    assert "did not answer vmm.ping within 1.5 s" in str(raised.value)
    assert "no answer within" in str(raised.value)
    workspace.assert_clean()


def test_default_deadlines_are_katas() -> None:
    timeouts = Timeouts()
    assert (timeouts.ready, timeouts.ready_interval, timeouts.call) == (10.0, 0.01, 1.0)
    assert (timeouts.shutdown, timeouts.exit_wait) == (3.0, 3.0)


def test_create_refused(
    workspace: Workspace, driver: CloudHypervisorDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised = _boot_faulty(monkeypatch, driver, workspace, "refuse-create", ApiError)
    error = raised.value
    assert error.status == 500 and error.endpoint == "vm.create"
    assert error.messages == ["Error from API", "The VM could not be created", "injected fault refuse-create"]
    assert str(error) == (
        "cloud-hypervisor vm.create: PUT vm.create answered 500: "
        "Error from API: The VM could not be created: injected fault refuse-create"
    )
    workspace.assert_clean()


@pytest.mark.usefixtures("standin_version")
def test_boot_refused_kernel_missing(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    missing = workspace.root / "no-such-vmlinuz"
    with pytest.raises(ApiError) as raised:
        driver.boot(workspace.spec(kernel=missing))
    assert raised.value.status == 500 and raised.value.endpoint == "vm.boot"
    assert f"Cannot open kernel file {missing}" in str(raised.value)
    workspace.assert_clean()


def test_boot_refused_elf_without_pvh_note(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    elf = workspace.root / "vmlinux"
    elf.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 200)
    with pytest.raises(ApiError, match="KernelMissingPvhHeader"):
        driver.boot(workspace.spec(kernel=elf))
    workspace.assert_clean()


def test_guest_agent_never_accepts(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CH_STANDIN_FAULTS", "guest-never-accepts")
    started = time.monotonic()
    with pytest.raises(AgentUnreachable) as raised:
        fast_driver().boot(workspace.spec(agent_timeout=1.0))
    assert 1.0 <= time.monotonic() - started < 10
    message = str(raised.value)
    assert message.startswith("guest agent connect: the guest agent did not accept CONNECT 1024")
    assert "within 1 s" in message and "closed without OK" in message
    workspace.assert_clean()


def test_vmm_crashes_during_boot(
    workspace: Workspace, driver: CloudHypervisorDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VMM that dies mid-call is reported by its exit status and log, not as a reset socket."""
    raised = _boot_faulty(monkeypatch, driver, workspace, "crash-on-boot", VmmExited)
    assert raised.value.returncode == -signal.SIGSYS
    message = str(raised.value)
    assert message.startswith("cloud-hypervisor vm.boot: VMM process") and "killed by SIGSYS" in message
    assert "crash-on-boot" in message  # from the VMM's log
    workspace.assert_clean()


def test_vmm_killed_while_running(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    handle = driver.boot(workspace.spec())
    os.kill(handle.vmm_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while driver.alive(handle) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not driver.alive(handle)
    assert driver.exit_status(handle) == -signal.SIGKILL

    with pytest.raises(VmmDied) as raised:
        driver.connect(handle, timeout=5)
    assert isinstance(raised.value, VMGone)
    assert str(raised.value) == f"vm: VM 'vm1' failed: VMM process {handle.vmm_pid} killed by SIGKILL"
    with pytest.raises(VmmDied):
        driver.info(handle)

    stranger = CloudHypervisorDriver()  # another process: knows the PID, not the exit status
    assert not stranger.alive(handle)
    with pytest.raises(VmmDied, match="exit status unknown"):
        stranger.connect(handle)

    # A killed VMM removes nothing: its sockets are still there until stop.
    assert Path(handle.endpoints["api_socket"]).exists()
    driver.stop(handle)
    workspace.assert_clean()


def test_socket_path_too_long(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    deep = workspace.root / ("d" * 100)
    with pytest.raises(HypervisorError) as raised:
        driver.boot(workspace.spec(state_dir=deep))
    assert raised.value.step == "socket path"
    assert "AF_UNIX allows at most 107" in str(raised.value)
    assert not deep.exists()
    workspace.assert_clean()


def test_kernel_required(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    with pytest.raises(HypervisorError, match=r"VMSpec\.kernel is required"):
        driver.boot(workspace.spec(kernel=None))
    workspace.assert_clean()


def _stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a crashed VMM leaves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


@pytest.mark.usefixtures("standin_version", "echo_guest")
def test_stale_sockets_removed_before_launch(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    """v51 cannot bind over a stale API socket and every version fails to bind the vsock one."""
    workspace.state_dir.mkdir()
    _stale_socket(workspace.state_dir / "ch-api.sock")
    _stale_socket(workspace.state_dir / "ch-vsock.sock")
    (workspace.state_dir / "handle.json").write_text("{}")
    handle = driver.boot(workspace.spec())
    assert driver.alive(handle)
    driver.stop(handle)
    workspace.assert_clean()


@pytest.mark.usefixtures("echo_guest")
def test_refuses_to_replace_a_live_vmm(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    handle = driver.boot(workspace.spec())
    try:
        with pytest.raises(HypervisorError, match="served by a running process"):
            CloudHypervisorDriver().boot(workspace.spec(vm_id="vm2"))
        assert driver.alive(handle)  # and untouched: its files are all still there
        assert VMHandle.load(workspace.state_dir) == handle
        assert driver.info(handle).state == "Running"
        with driver.connect(handle, timeout=5):
            pass
    finally:
        driver.stop(handle)
    workspace.assert_clean()
