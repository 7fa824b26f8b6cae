"""Stored pids are signalled only while they name the process that was recorded, and the relay
is an exec'd interpreter of its own, never a fork of its (possibly multi-threaded) creator."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.runtime.conftest import BundleFactory
from vmsandbox.hypervisor.procs import running, signal_recorded, start_time
from vmsandbox.runtime import Runtime


def test_a_pid_whose_start_time_differs_is_never_signalled() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        started = start_time(proc.pid)
        assert started is not None
        other = str(int(started) + 1)  # what a process that took the number over would show
        assert signal_recorded(proc.pid, other, signal.SIGKILL) is False
        assert signal_recorded(proc.pid, other, signal.SIGKILL, group=True) is False
        time.sleep(0.1)
        assert proc.poll() is None, "a process that is not the recorded one must survive"
        assert signal_recorded(proc.pid, started, signal.SIGKILL) is True
        assert proc.wait(5) == -signal.SIGKILL
        assert signal_recorded(proc.pid, started, signal.SIGKILL) is False  # gone (reaped)
    finally:
        proc.kill()
        proc.wait()


def test_the_relay_is_named_and_recorded_with_its_start_time(rt: Runtime, make_bundle: BundleFactory) -> None:
    bundle = make_bundle(["sh", "-c", "sleep 30"])
    state = rt.create("relayexec", bundle)
    relay = state.pid
    # Forked by the state root's fork server, named after the relay's module as if exec'd.
    cmdline = Path(f"/proc/{relay}/cmdline").read_bytes().split(b"\0")
    assert b"vmsandbox.runtime.relay_main" in cmdline, cmdline
    record = json.loads((rt.root / "relayexec" / "state.json").read_text())
    assert record["relay_start"] == start_time(relay)
    # The VMM (process backend: the guest agent's group) carries its start time too.
    assert state.vm is not None and state.vm.endpoints["vmm_start"] == start_time(state.vm.vmm_pid)
    rt.delete("relayexec", force=True)
    assert not running(relay, record["relay_start"])
