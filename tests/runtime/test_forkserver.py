"""The process backend's fork server: one interpreter per state root forks every agent."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.leaks import processes_mentioning
from tests.network.conftest import require_network_tools
from tests.runtime.conftest import BundleFactory
from tests.runtime.support import short_root
from tests.runtime.test_lifecycle import relay_status
from vmsandbox.hypervisor import forkserver
from vmsandbox.hypervisor.base import HypervisorError, VMHandle, VMSpec
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.hypervisor.process import ProcessDriver, ping
from vmsandbox.hypervisor.procs import identity, running
from vmsandbox.runtime import Runtime

#: A stand-in server: listens on argv[1], records itself as the server, and for each request
#: either closes the connection once the request is read (crash) or answers nonsense (refuse).
FAKE = r"""
import os, socket, sys
sock_path, identity_path, mode = sys.argv[1:4]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sock_path)
listener.listen(8)
start = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19]
open(identity_path, "w").write(f"{os.getpid()} {start}")
while True:
    conn, _ = listener.accept()
    conn.recv(1 << 20)
    if mode == "refuse":
        conn.sendall(b"busy\n")
    conn.close()
"""


@pytest.fixture
def root() -> Iterator[Path]:
    path = short_root()
    yield path
    forkserver.stop(path / ".vms")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def driver() -> ProcessDriver:
    return ProcessDriver(HypervisorConfig())


def _boot(driver: ProcessDriver, root: Path, name: str, netns: Path | None = None) -> VMHandle:
    network = NetworkAttachment(netns=netns) if netns is not None else None
    return driver.boot(VMSpec(vm_id=name, state_dir=root / ".vms" / name, network=network))


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def _server_pid(root: Path) -> int:
    text = forkserver.server_identity(root / ".vms")
    assert text, "no fork server is running"
    return int(text.split()[0])


def _answers(driver: ProcessDriver, handle: VMHandle) -> bool:
    with driver.connect(handle) as sock:
        ping(sock, 5.0)
    return True


def _stop_all(driver: ProcessDriver, handles: list[VMHandle], root: Path) -> None:
    for handle in handles:
        driver.stop(handle)
    assert processes_mentioning(str(root)) == [], "an agent outlived its stop"


def test_one_fork_server_forks_every_agent(driver: ProcessDriver, root: Path) -> None:
    handles = [_boot(driver, root, f"vm-{i}") for i in range(3)]
    try:
        server = _server_pid(root)
        for handle in handles:
            pid = handle.vmm_pid
            assert _parent(pid) == server, "forked by the one server, not started as a program"
            assert _cmdline(pid).startswith("vmsandbox-guest (forked) serve"), _cmdline(pid)
            assert str(handle.state_dir) in _cmdline(pid), "named after its sandbox"
            assert os.getsid(pid) == pid, "a session of its own"
            [init] = _children(pid)
            assert os.readlink(f"/proc/{init}/ns/pid") != os.readlink("/proc/self/ns/pid")
            for ns in ("mnt", "uts", "ipc"):
                assert os.readlink(f"/proc/{init}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
            assert _answers(driver, handle)
        assert str(root) not in _cmdline(server), "the server is none of the root's sandboxes"
    finally:
        _stop_all(driver, handles, root)
    assert running(server), "the server outlives the agents it started"


def test_the_agent_lives_in_the_given_network_namespace(driver: ProcessDriver, root: Path) -> None:
    require_network_tools()  # iproute2; a failure, not a skip, where CI promises the tools
    name = f"vfs-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    netns = Path(f"/run/netns/{name}")
    handles: list[VMHandle] = []
    try:
        handles.append(_boot(driver, root, "vm-net", netns))
        handle = handles[0]
        assert _parent(handle.vmm_pid) == _server_pid(root)
        [init] = _children(handle.vmm_pid)
        assert os.readlink(f"/proc/{init}/ns/net") == f"net:[{netns.stat().st_ino}]"
        assert _answers(driver, handle)
    finally:
        _stop_all(driver, handles, root)
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_killing_the_server_kills_no_agent_and_the_next_boot_starts_one(
    driver: ProcessDriver, root: Path
) -> None:
    handles = [_boot(driver, root, "vm-a")]
    try:
        first = forkserver.server_identity(root / ".vms")
        os.kill(_server_pid(root), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while forkserver.server_identity(root / ".vms") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert driver.alive(handles[0]) and _answers(driver, handles[0])
        handles.append(_boot(driver, root, "vm-b"))
        second = forkserver.server_identity(root / ".vms")
        assert second and second != first
        assert _parent(handles[1].vmm_pid) == int(second.split()[0])
        assert driver.alive(handles[0]) and _answers(driver, handles[0])
    finally:
        _stop_all(driver, handles, root)


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    sock.settimeout(0.0)
    return sock


def test_a_socket_whose_server_is_not_the_recorded_process_is_not_used(
    driver: ProcessDriver, root: Path
) -> None:
    """A dead server's files, its pid now someone else's: the socket is never connected to."""
    directory = forkserver.server_dir(root / ".vms")
    directory.mkdir(parents=True)
    impostor = _listener(directory / forkserver.SOCKET)
    me = identity().split()
    (directory / forkserver.IDENTITY).write_text(f"{me[0]} {int(me[1]) + 1}")  # pid reused
    handles: list[VMHandle] = []
    try:
        handles.append(_boot(driver, root, "vm-s"))
        with pytest.raises(BlockingIOError):
            impostor.accept()
        assert _parent(handles[0].vmm_pid) == _server_pid(root) != os.getpid()
    finally:
        impostor.close()
        _stop_all(driver, handles, root)


@pytest.mark.parametrize("mode", ["crash", "refuse"])
def test_a_server_failing_mid_request_means_a_cold_start_and_no_leak(
    driver: ProcessDriver, root: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    directory = forkserver.server_dir(root / ".vms")
    directory.mkdir(parents=True)
    sock, ident = directory / forkserver.SOCKET, directory / forkserver.IDENTITY
    fake = subprocess.Popen([sys.executable, "-c", FAKE, str(sock), str(ident), mode])
    handles: list[VMHandle] = []
    try:
        deadline = time.monotonic() + 10
        while not ident.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with caplog.at_level(logging.WARNING, logger="vmsandbox.hypervisor.process"):
            handles.append(_boot(driver, root, "vm-f"))
        assert "starting the agent of vm-f as a new process" in caplog.text
        assert _cmdline(handles[0].vmm_pid).startswith("unshare "), "the cold start"
        assert _answers(driver, handles[0])
        assert fake.wait(5) == -signal.SIGKILL, "a server that failed a request is retired"
        handles.append(_boot(driver, root, "vm-g"))
        assert _parent(handles[1].vmm_pid) == _server_pid(root) != fake.pid
    finally:
        fake.kill()
        fake.wait()
        _stop_all(driver, handles, root)


def test_a_child_that_fails_is_reported_and_the_server_kept(driver: ProcessDriver, root: Path) -> None:
    _stop_all(driver, [_boot(driver, root, "vm-ok")], root)
    server = _server_pid(root)
    with pytest.raises(HypervisorError):
        _boot(driver, root, "vm-bad", Path("/nonexistent/netns"))
    assert processes_mentioning(str(root)) == []
    assert _server_pid(root) == server


def test_a_client_gone_before_go_leaves_nothing_running(driver: ProcessDriver, root: Path) -> None:
    _stop_all(driver, [_boot(driver, root, "vm-ok")], root)
    state = root / ".vms" / "vm-half"
    state.mkdir()
    request = {
        "argv": ["serve", "--listen", f"unix:{state / 'agent.sock'}", "--state-dir", str(state / "guest")],
        "env": dict(os.environ),
        "cwd": "/",
        "log": str(state / "agent.log"),
        "netns": None,
        "cgroup_procs": [],
        "title": ["vmsandbox-guest", "(forked)", "half", str(state)],
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(forkserver.server_dir(root / ".vms") / forkserver.SOCKET))
        sock.settimeout(10)
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = sock.recv(100).decode()
    assert reply.startswith("ok ")
    child = int(reply.split()[1])
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not running(child) and processes_mentioning(str(root)) == []
    assert not (state / "agent.sock").exists(), "the agent never ran"


def test_the_server_exits_when_its_state_root_is_removed(driver: ProcessDriver, root: Path) -> None:
    _stop_all(driver, [_boot(driver, root, "vm-r")], root)
    server = forkserver.server_identity(root / ".vms")
    shutil.rmtree(root)
    deadline = time.monotonic() + 15  # it looks twice a second; a loaded machine delays it
    pid, started = server.split()
    while running(int(pid), started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(int(pid), started)


def test_the_relay_is_forked_by_the_same_server(rt: Runtime, make_bundle: BundleFactory) -> None:
    state = rt.create("fsrelay", make_bundle(["sh", "-c", "echo hi; exit 3"]))
    try:
        assert state.vm is not None
        server = _server_pid(rt.root)
        assert _parent(state.vm.vmm_pid) == server
        relay = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
        assert relay[:2] == [b"vmsandbox.runtime.relay_main", b"(forked)"], relay
        rt.start("fsrelay")
        assert relay_status(state.pid) == 3
        assert _server_pid(rt.root) == server, "one server for agent and relay"
    finally:
        rt.delete("fsrelay", force=True)


def test_a_relay_the_server_cannot_fork_is_execd(
    rt: Runtime, make_bundle: BundleFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rt.create("fsfirst", make_bundle(["true"]))
    rt.delete("fsfirst", force=True)
    os.kill(_server_pid(rt.root), signal.SIGSTOP)  # hung: requests time out
    try:
        with caplog.at_level(logging.WARNING):
            state = rt.create("fscold", make_bundle(["sh", "-c", "exit 4"]))
        assert "starting the agent of" in caplog.text and "as a new process" in caplog.text
        assert state.vm is not None and _cmdline(state.vm.vmm_pid).startswith("unshare ")
        # The hung server was replaced after the agent's request: the relay came from the new one.
        assert b"(forked)" in Path(f"/proc/{state.pid}/cmdline").read_bytes()
        rt.start("fscold")
        assert relay_status(state.pid) == 4
    finally:
        rt.delete("fscold", force=True)


def test_a_server_another_process_started_forks_agents_but_no_relay(
    rt: Runtime, make_bundle: BundleFactory
) -> None:
    """Its orphans go to that process's subreaper; a relay must come back to this caller's."""
    vms = rt.root / ".vms"
    starter = "import sys; from pathlib import Path; from vmsandbox.hypervisor import forkserver as f; "
    starter += "f._connect(Path(sys.argv[1])).close()"
    subprocess.run([sys.executable, "-c", starter, str(forkserver.server_dir(vms))], check=True)
    assert not forkserver.started_here(vms)
    state = rt.create("fsother", make_bundle(["sh", "-c", "exit 5"]))
    try:
        assert state.vm is not None and _parent(state.vm.vmm_pid) == _server_pid(rt.root)
        relay = Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")
        assert b"(forked)" not in relay and b"vmsandbox.runtime.relay_main" in relay, relay
        rt.start("fsother")
        assert relay_status(state.pid) == 5
    finally:
        rt.delete("fsother", force=True)


def test_only_the_servers_own_user_is_served(driver: ProcessDriver, root: Path) -> None:
    """The server runs what it is asked to as root: its directory is root's alone, and a peer of
    another user is refused even where the socket itself is reachable."""
    _stop_all(driver, [_boot(driver, root, "vm-u")], root)
    directory = forkserver.server_dir(root / ".vms")
    assert directory.stat().st_mode & 0o777 == 0o700
    before = forkserver.server_identity(root / ".vms")
    os.chmod(directory, 0o755)  # as if the mode were lost: the peer check must still hold
    os.chmod(directory / forkserver.SOCKET, 0o777)
    try:
        probe = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(sys.argv[1])\n"
            "s.settimeout(10)\n"
            "try:\n"
            '    s.sendall(b\'{"kind": "run", "module": "vmsandbox.guest", "argv": []}\\n\')\n'
            "    print(repr(s.recv(100)))\n"
            "except (BrokenPipeError, ConnectionResetError):\n"
            "    print(repr(b''))\n"
        )
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        argv += [sys.executable, "-S", "-c", probe, str(directory / forkserver.SOCKET)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    finally:
        os.chmod(directory, 0o700)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "b''", "the connection is closed unanswered"
    assert forkserver.server_identity(root / ".vms") == before, "the server itself carries on"
    assert "refused a connection from uid 65534" in (directory / forkserver.LOG).read_text()
