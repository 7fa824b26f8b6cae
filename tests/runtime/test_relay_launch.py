"""The relay launched ahead of its container: handed its container later, or abandoned cleanly."""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.conftest import BundleFactory, process_runtime
from tests.runtime.support import fork_servers, live_children
from tests.runtime.test_lifecycle import relay_status
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.procs import running
from vmsandbox.runtime import Runtime
from vmsandbox.runtime import relay as relay_module
from vmsandbox.runtime.errors import AgentError, InjectedFault
from vmsandbox.runtime.faults import CREATE_STEPS, FAIL_AT_ENV
from vmsandbox.runtime.relay import PendingRelay

#: Agents and relays each a new interpreter, as a one-shot ``vmsandbox-runtime create`` has them.
NO_FORK_SERVER = HypervisorConfig(process_forkserver=False, relay_forkserver=False, cgroup_parent="")


@pytest.fixture
def cold_rt() -> Iterator[Runtime]:
    with process_runtime(NO_FORK_SERVER) as runtime:
        yield runtime


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the relays' launchers (new interpreters) started from here on."""
    pids: list[int] = []
    launch = PendingRelay._launch

    def recorded(self: PendingRelay, config: relay_module.RelayConfig | None) -> None:
        launch(self, config)
        if isinstance(self._launcher, subprocess.Popen):
            pids.append(self._launcher.pid)

    monkeypatch.setattr(PendingRelay, "_launch", recorded)
    return pids


def _left_behind(pids: list[int]) -> set[int]:
    """Those of ``pids`` that are still our children a moment later, running or exited and not
    reaped: whoever launched a relay reaps its launcher, so neither may remain."""
    deadline = time.monotonic() + 5
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return set(pids) & set(live_children())


def test_a_new_interpreter_is_launched_before_its_container_and_abandoned_cleanly(
    tmp_path: Path, launched: list[int]
) -> None:
    pending = PendingRelay("qemu", NO_FORK_SERVER, tmp_path / ".vms", tmp_path / "relay.log")
    assert not pending.forked
    assert len(launched) == 1 and running(launched[0]), "the relay's interpreter starts at once"
    started = time.monotonic()
    pending.abandon()
    assert time.monotonic() - started < 5
    assert _left_behind(launched) == set(), "an abandoned relay exits, and its launcher is reaped"
    assert (tmp_path / "relay.log").read_text() == "", "it exits without complaint"
    pending.abandon()  # twice is harmless


def test_a_relay_the_fork_server_would_fork_is_launched_only_when_handed_its_container(
    tmp_path: Path,
) -> None:
    before = set(live_children())
    pending = PendingRelay(
        "process", HypervisorConfig(cgroup_parent=""), tmp_path / ".vms", tmp_path / "r.log"
    )
    assert pending.forked
    assert set(live_children()) == before
    pending.abandon()


def test_a_sandbox_created_with_a_relay_launched_ahead_runs_and_reports_its_exit(
    cold_rt: Runtime, make_bundle: BundleFactory
) -> None:
    try:
        state = cold_rt.create("ahead", make_bundle(["sh", "-c", "echo out; echo err >&2; exit 6"]))
        relay = Path(f"/proc/{state.pid}/cmdline").read_bytes()
        assert b"vmsandbox.runtime.relay_main" in relay and b"(forked)" not in relay, relay
        cold_rt.start("ahead")
        assert relay_status(state.pid) == 6
        assert state.log_path is not None
        logged = Path(state.log_path).read_bytes()
        assert b"out" in logged and b"err" in logged, logged
    finally:
        cold_rt.delete("ahead", force=True)


@pytest.mark.parametrize("step", CREATE_STEPS)
def test_a_create_that_fails_leaves_no_relay_launched_ahead(
    cold_rt: Runtime,
    make_bundle: BundleFactory,
    monkeypatch: pytest.MonkeyPatch,
    launched: list[int],
    step: str,
) -> None:
    monkeypatch.setenv(FAIL_AT_ENV, step)
    with pytest.raises(InjectedFault):
        cold_rt.create("gone", make_bundle(["true"]))
    # The relay is launched once the create has a record, just before its disk.
    assert len(launched) == (CREATE_STEPS.index(step) >= CREATE_STEPS.index("disk"))
    assert _left_behind(launched) == set(), f"a relay outlived a create that failed at {step}"
    assert not (cold_rt.root / "gone").exists()


def test_a_relay_that_died_before_its_container_existed_fails_the_create_at_the_relay_step(
    cold_rt: Runtime, make_bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch = PendingRelay._launch

    def launch_then_die(self: PendingRelay, config: relay_module.RelayConfig | None) -> None:
        launch(self, config)
        assert isinstance(self._launcher, subprocess.Popen)
        self._launcher.send_signal(signal.SIGKILL)
        self._launcher.wait()

    monkeypatch.setattr(PendingRelay, "_launch", launch_then_die)
    before = set(live_children())
    with pytest.raises(AgentError) as info:
        cold_rt.create("orphan", make_bundle(["true"]))
    assert info.value.step == "relay"
    assert "the relay did not attach to the container" in str(info.value)
    assert not any(running(p) for p in set(live_children()) - before - fork_servers())
    assert not (cold_rt.root / "orphan").exists()


# -- the relay's side of the hand-over, in a process of its own (it takes over 0, 1 and 2) --------

RECEIVER = textwrap.dedent(
    """
    import os, sys
    from vmsandbox.runtime.relay_main import RelayError, receive_config
    try:
        got = receive_config(3)
    except RelayError as exc:
        print("error:", exc, file=sys.stderr)
        sys.exit(3)
    if got is None:
        sys.exit(4)
    config, agent = got
    agent.sendall(config.container_id.encode())
    os.write(1, b"to stdout")
    os.write(2, b"to stderr")
    """
)


def _receiver(ours: socket.socket) -> subprocess.Popen[bytes]:
    theirs_fd = ours.fileno()
    return subprocess.Popen(
        [sys.executable, "-c", f"import os; os.dup2({theirs_fd}, 3); exec({RECEIVER!r})"],
        pass_fds=(theirs_fd,),
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(relay_module.__file__).parents[2])},
    )


def _config(container_id: str) -> bytes:
    doc = {
        "container_id": container_id,
        "terminal": False,
        "log_path": "/nonexistent/log",
        "relay_log": "/nonexistent/relay.log",
        "max_bytes": 1,
        "max_files": 1,
        "handle": {},
        "hypervisor_config": {},
    }
    return json.dumps(doc).encode()


def test_the_relay_takes_its_stdio_and_connection_from_the_hand_over(tmp_path: Path) -> None:
    creator, relay_end = socket.socketpair()
    agent_ours, agent_theirs = socket.socketpair()
    stdout, stderr = tmp_path / "out", tmp_path / "err"
    with open(os.devnull, "rb") as null, stdout.open("wb") as out, stderr.open("wb") as err:
        child = _receiver(relay_end)
        relay_end.close()
        fds = array.array("i", [agent_theirs.fileno(), null.fileno(), out.fileno(), err.fileno()])
        body = _config("handed-over") + b" " * 100_000  # more than one read's worth
        sent = creator.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        creator.sendall(body[sent:])
        creator.shutdown(socket.SHUT_WR)
        agent_theirs.close()
        assert child.wait(30) == 0, child.stderr.read() if child.stderr else ""
    assert agent_ours.recv(100) == b"handed-over"
    assert stdout.read_bytes() == b"to stdout"
    assert stderr.read_bytes() == b"to stderr"
    creator.close()
    agent_ours.close()


def test_a_relay_whose_creator_sends_nothing_exits_quietly() -> None:
    creator, relay_end = socket.socketpair()
    child = _receiver(relay_end)
    relay_end.close()
    creator.close()
    assert child.wait(30) == 4
    assert child.stderr is not None and child.stderr.read() == b""


def test_a_hand_over_without_its_four_descriptors_is_refused() -> None:
    creator, relay_end = socket.socketpair()
    child = _receiver(relay_end)
    relay_end.close()
    with open(os.devnull, "rb") as null:
        fds = array.array("i", [null.fileno()])
        creator.sendmsg([_config("short")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    creator.close()
    assert child.wait(30) == 3
    assert child.stderr is not None and b"sent 1 of the 4 descriptors" in child.stderr.read()
