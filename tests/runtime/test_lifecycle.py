"""Real lifecycles on the process backend: runc in the agent, busybox bundles, relay pids."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.runtime.conftest import BundleFactory, assert_no_leaks, cri_container
from tests.runtime.support import Schemas
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.process import ProcessDriver, cgroup_mounts
from vmsandbox.runtime import ContainerState, Runtime
from vmsandbox.runtime.diskcache import disk_serial
from vmsandbox.runtime.errors import IdInUse, NotFound, WrongState

_ids = itertools.count()
Pod = tuple[Runtime, str]


def relay_status(pid: int, timeout: float = 20.0) -> int:
    """Reap the relay we forked and return its exit status as a shell reports it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        time.sleep(0.01)
    raise AssertionError(f"relay {pid} still running after {timeout}s")


def relay_alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) not in ("Z", "X")
    except OSError:
        return False


def wait_for_status(rt: Runtime, cid: str, status: str, timeout: float = 10.0) -> ContainerState:
    deadline = time.monotonic() + timeout
    while True:
        state = rt.state(cid)
        if state.status == status or time.monotonic() > deadline:
            assert state.status == status
            return state
        time.sleep(0.02)


def state_json(state: ContainerState) -> dict[str, object]:
    doc: dict[str, object] = json.loads(state.model_dump_json(exclude_none=True))
    return doc


def in_pod(pod: Pod, make_bundle: BundleFactory, args: list[str], **kwargs: object) -> tuple[str, Path]:
    _, sandbox = pod
    return f"m{next(_ids)}", make_bundle(args, annotations=cri_container(sandbox), **kwargs)


def test_sandbox_lifecycle(rt: Runtime, make_bundle: BundleFactory, schemas: Schemas, tmp_path: Path) -> None:
    bundle = make_bundle(["sh", "-c", "echo out; echo err >&2; touch /ran"], writable=True)
    out, err, pid_file = tmp_path / "out", tmp_path / "err", tmp_path / "pid"
    with out.open("wb") as o, err.open("wb") as e, open(os.devnull, "rb") as i:
        created = rt.create("life", bundle, pid_file=pid_file, stdio=(i.fileno(), o.fileno(), e.fileno()))

    # S2-S4, S6, C11: created, schema-valid, pid file == state.pid, bare decimal.
    state = rt.state("life")
    assert state.status == "created" and state.id == "life" and state.bundle == str(bundle)
    assert schemas.errors("state-schema.json", state_json(state)) == []
    assert pid_file.read_text() == str(created.pid) == str(state.pid)
    assert Path(f"/proc/{state.pid}").exists()
    assert state.vm is not None and state.hypervisor == "process"
    assert state.timings.agentReady > 0 and state.timings.containerCreate > 0
    # C7: the user program has not run.
    time.sleep(0.2)
    assert not (bundle / "rootfs" / "ran").exists()
    assert Path(state.log_path or "").read_bytes() == b""

    running = rt.start("life")
    assert running.status in ("running", "stopped")
    assert rt.wait("life", timeout=20) == 0
    assert relay_status(state.pid) == 0
    stopped = rt.state("life")
    assert stopped.status == "stopped" and stopped.exit_code == 0
    assert stopped.started_at is not None and stopped.finished_at is not None
    assert schemas.errors("state-schema.json", state_json(stopped)) == []
    assert (bundle / "rootfs" / "ran").exists()
    assert out.read_bytes() == b"out\n" and err.read_bytes() == b"err\n"
    assert sorted(Path(state.log_path or "").read_bytes().split()) == [b"err", b"out"]

    rt.delete("life")
    with pytest.raises(NotFound):
        rt.state("life")
    assert_no_leaks(rt.root)
    # D5: the id is free again.
    again = rt.create("life", make_bundle(["true"]))
    rt.delete("life", force=True)
    assert not relay_alive(again.pid), "delete reaps the relay"


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_reaches_relay(pod: Pod, make_bundle: BundleFactory, code: int) -> None:
    rt, _ = pod
    cid, bundle = in_pod(pod, make_bundle, ["sh", "-c", f"exit {code}"])
    state = rt.create(cid, bundle)
    rt.start(cid)
    assert relay_status(state.pid) == code
    assert rt.wait(cid) == code
    assert rt.state(cid).exit_code == code
    rt.delete(cid)


def test_killed_container_exits_137(pod: Pod, make_bundle: BundleFactory) -> None:
    rt, _ = pod
    cid, bundle = in_pod(pod, make_bundle, ["sleep", "100"])
    state = rt.create(cid, bundle)
    rt.start(cid)
    assert rt.state(cid).status == "running"
    rt.kill(cid, "KILL")
    assert relay_status(state.pid) == 137
    assert wait_for_status(rt, cid, "stopped").exit_code == 137
    rt.delete(cid)


TRAP_TERM = ["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.05; done"]


def test_kill_default_term_then_stopped(pod: Pod, make_bundle: BundleFactory) -> None:
    rt, _ = pod
    cid, bundle = in_pod(pod, make_bundle, TRAP_TERM)
    state = rt.create(cid, bundle)
    rt.start(cid)
    time.sleep(0.2)  # let the shell install its trap
    rt.kill(cid)
    assert wait_for_status(rt, cid, "stopped").exit_code == 7
    assert relay_status(state.pid) == 7
    with pytest.raises(WrongState, match="is stopped"):
        rt.kill(cid, "KILL")
    rt.delete(cid)


def test_signal_sent_to_relay_reaches_container(pod: Pod, make_bundle: BundleFactory) -> None:
    rt, _ = pod
    cid, bundle = in_pod(pod, make_bundle, TRAP_TERM)
    state = rt.create(cid, bundle)
    rt.start(cid)
    time.sleep(0.2)
    os.kill(state.pid, signal.SIGTERM)
    assert relay_status(state.pid) == 7
    rt.delete(cid)


def test_wrong_state_operations(pod: Pod, make_bundle: BundleFactory) -> None:
    rt, _ = pod
    cid, bundle = in_pod(pod, make_bundle, ["sleep", "100"])
    state = rt.create(cid, bundle)
    with pytest.raises(WrongState, match="is created; stop it first or use --force"):
        rt.delete(cid)
    rt.start(cid)
    with pytest.raises(WrongState, match="is running, not created"):
        rt.start(cid)
    with pytest.raises(WrongState, match="is running; stop it first"):
        rt.delete(cid)
    rt.delete(cid, force=True)
    assert not relay_alive(state.pid)
    with pytest.raises(NotFound):
        rt.start(cid)


def test_duplicate_id_keeps_first(pod: Pod, make_bundle: BundleFactory) -> None:
    rt, _ = pod
    cid, bundle = in_pod(pod, make_bundle, ["true"])
    first = rt.create(cid, bundle)
    with pytest.raises(IdInUse):
        rt.create(cid, bundle)
    assert rt.state(cid).status == "created" and rt.state(cid).pid == first.pid
    rt.delete(cid, force=True)


def test_config_changes_after_create_do_not_apply(
    pod: Pod, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    rt, _ = pod
    cid, bundle = in_pod(pod, make_bundle, ["echo", "original"])
    rt.create(cid, bundle)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["echo", "changed"]
    (bundle / "config.json").write_text(json.dumps(config))
    rt.start(cid)
    assert rt.wait(cid) == 0
    time.sleep(0.1)
    assert Path(rt.state(cid).log_path or "").read_text() == "original\n"
    rt.delete(cid)


def test_unknown_properties_are_ignored(pod: Pod, make_bundle: BundleFactory, schemas: Schemas) -> None:
    rt, _ = pod

    def future(c: dict[str, object]) -> None:
        c["org.example.future"] = {"anything": [1, 2]}
        process = c["process"]
        assert isinstance(process, dict)
        process["somedayField"] = True

    cid, bundle = in_pod(pod, make_bundle, ["true"], edit=future)
    assert schemas.errors("config-schema.json", json.loads((bundle / "config.json").read_text())) == []
    state = rt.create(cid, bundle)
    rt.start(cid)
    assert relay_status(state.pid) == 0
    rt.delete(cid)


def test_stdin_and_stdout_pass_through(pod: Pod, make_bundle: BundleFactory, tmp_path: Path) -> None:
    rt, _ = pod
    cid, bundle = in_pod(pod, make_bundle, ["cat"])
    (tmp_path / "in").write_bytes(b"line one\nline two\n")
    with (tmp_path / "in").open("rb") as i, (tmp_path / "out").open("wb") as o:
        state = rt.create(cid, bundle, stdio=(i.fileno(), o.fileno(), o.fileno()))
    rt.start(cid)
    assert relay_status(state.pid) == 0
    assert (tmp_path / "out").read_bytes() == b"line one\nline two\n"
    rt.delete(cid)


def test_list_reports_every_container(pod: Pod, make_bundle: BundleFactory, schemas: Schemas) -> None:
    rt, sandbox = pod
    cid, bundle = in_pod(pod, make_bundle, ["true"])
    rt.create(cid, bundle)
    listed = {s.id: s for s in rt.list()}
    assert listed[sandbox].status == "running" and listed[cid].status == "created"
    for state in listed.values():
        assert schemas.errors("state-schema.json", state_json(state)) == []
    rt.delete(cid, force=True)


def test_two_containers_in_one_sandbox(rt: Runtime, make_bundle: BundleFactory) -> None:
    sandbox = rt.create("sb", make_bundle(["sleep", "100"]))
    member = rt.create("member", make_bundle(["sh", "-c", "exit 5"], annotations=cri_container("sb")))
    assert sandbox.vm is not None and member.vm is not None
    assert member.vm.vmm_pid == sandbox.vm.vmm_pid  # joined the sandbox's VM, booted none
    assert member.timings.vmBoot == 0
    rt.start("sb")
    rt.start("member")
    assert relay_status(member.pid) == 5
    assert rt.state("sb").status == "running"
    rt.kill("sb", "KILL")
    assert relay_status(sandbox.pid) == 137
    wait_for_status(rt, "sb", "stopped")
    with pytest.raises(WrongState, match="still has containers: member"):
        rt.delete("sb")
    rt.delete("member")
    rt.delete("sb")
    assert_no_leaks(rt.root)


def test_deleting_sandbox_with_force_removes_members(rt: Runtime, make_bundle: BundleFactory) -> None:
    rt.create("sb", make_bundle(["sleep", "100"]))
    rt.create("m1", make_bundle(["sleep", "100"], annotations=cri_container("sb")))
    rt.start("m1")
    rt.delete("sb", force=True)
    assert rt.list() == []
    assert_no_leaks(rt.root)


def _receive_master(listener: socket.socket, got: dict[str, object]) -> None:
    conn, _ = listener.accept()
    with conn:
        msg, fds, _, _ = socket.recv_fds(conn, 4096, 4)
        got["name"], got["fds"] = msg.decode(), fds


def test_console_socket_gets_pty_master(pod: Pod, make_bundle: BundleFactory, tmp_path: Path) -> None:
    rt, _ = pod

    def terminal(c: dict[str, object]) -> None:
        process = c["process"]
        assert isinstance(process, dict)
        process["terminal"] = True

    cid, bundle = in_pod(pod, make_bundle, ["sh", "-c", "tty; echo hello-from-tty"], edit=terminal)
    sock_path = tmp_path / "console.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    got: dict[str, object] = {}
    receiver = threading.Thread(target=_receive_master, args=(listener, got))
    receiver.start()
    state = rt.create(cid, bundle, console_socket=sock_path)
    receiver.join(10)
    listener.close()
    fds = got["fds"]
    assert isinstance(fds, list) and len(fds) == 1, "exactly one fd in one SCM_RIGHTS message"
    assert str(got["name"]).startswith("/dev/pts/")
    master = fds[0]
    assert os.isatty(master)
    rt.start(cid)
    output = b""
    deadline = time.monotonic() + 10
    while b"hello-from-tty" not in output and time.monotonic() < deadline:
        try:
            output += os.read(master, 4096)
        except OSError:
            break
    os.close(master)
    assert b"hello-from-tty" in output
    assert b"/dev/pts/" in output  # the guest side allocated a real terminal for the process
    assert relay_status(state.pid) == 0
    rt.delete(cid)


class _DiskOnlyDriver(ProcessDriver):
    """The process backend told not to share the host fs: the runtime must ship disks instead."""

    shares_host_fs = False


def test_disk_path_for_vm_backends(rt: Runtime, make_bundle: BundleFactory, tmp_path: Path) -> None:
    """What Cloud Hypervisor/QEMU get: an ext4 disk at boot, another hot-plugged, found by serial."""
    rt._drivers["process"] = _DiskOnlyDriver(HypervisorConfig())
    out = tmp_path / "out"
    sandbox = rt.create("dsb", make_bundle(["sleep", "100"], writable=True))
    record = rt.store.load("dsb")
    assert record.disk_image is not None and Path(record.disk_image).stat().st_size > 0
    with out.open("wb") as o:
        member = rt.create(
            "dm",
            make_bundle(["sh", "-c", "ls /bin/busybox"], writable=True, annotations=cri_container("dsb")),
            stdio=(0, o.fileno(), o.fileno()),
        )
    assert sandbox.vm is not None
    disks = json.loads((sandbox.vm.state_dir / "disks.json").read_text())
    assert sorted(disks) == sorted([disk_serial("dsb"), disk_serial("dm")])
    rt.start("dm")
    assert relay_status(member.pid) == 0
    assert out.read_bytes() == b"/bin/busybox\n"
    rt.delete("dsb", force=True)
    assert_no_leaks(rt.root)


def test_vm_dying_under_a_running_container(rt: Runtime, make_bundle: BundleFactory) -> None:
    """The VM (here: the agent's process group) vanishes: the relay ends, state says stopped."""
    state = rt.create("doomed", make_bundle(["sleep", "100"]))
    rt.start("doomed")
    assert state.vm is not None
    os.killpg(state.vm.vmm_pid, signal.SIGKILL)
    assert relay_status(state.pid) == 255  # the relay lost the agent before any exit status
    gone = wait_for_status(rt, "doomed", "stopped")
    assert gone.exit_code is None and gone.pid == 0
    with pytest.raises(WrongState):
        rt.kill("doomed")
    rt.delete("doomed")
    assert_no_leaks(rt.root)
    # runc never deleted the container, yet its cgroups went with the "VM".
    parent = state.vm.endpoints["cgroup_parent"].lstrip("/")
    assert [m for m in cgroup_mounts() if (m / parent).exists()] == []
