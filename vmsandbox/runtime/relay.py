"""The host-side relay: the process whose pid callers see as the container's.

A runc-style caller (containerd's shim, a shell) waits on the pid from ``--pid-file`` and reads
the stdio it gave ``create``. The container runs in a guest where host pids mean nothing, so one
relay per container stands in for it (kata-shim's model): it attaches to the guest agent, copies
output to its own stdout/stderr and to the container log, copies its stdin in, forwards the
signals it receives, and exits with the container's status (128 + signal when one killed it).

The relay is a fresh interpreter (:mod:`vmsandbox.runtime.relay_main`), never a fork of its
creator: the creator may be the multi-threaded agent, and a forked child could inherit a lock
some other thread held at that instant. So that it starts in tens of milliseconds, the relay
imports little: the creator connects to the guest agent and hands it the connected socket, the
configuration arrives as JSON on a pipe, and a driver of its own is built only when a signal
must be forwarded.

Like the VMM, the relay must outlive its creator, even a node agent whose whole cgroup a container
runtime killed: the fresh interpreter (single-threaded, so it may fork) joins the VM's cgroup,
is in a session of its own and forks once more, so that the relay is no child of the creator.
The container's exit code goes to a file as well as to its exit status, for whoever asks later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsandbox.hypervisor import driver_for, forkserver
from vmsandbox.hypervisor.base import CGROUP_ENDPOINT, SERIAL_LOG_ENDPOINT, HypervisorError, VMHandle
from vmsandbox.hypervisor.cgroups import host_namespace, procs_files
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.procs import running, signal_recorded, start_time
from vmsandbox.runtime.errors import AgentError
from vmsandbox.runtime.logfiles import LogLimits
from vmsandbox.runtime.relay_main import EXIT_FILE, FORWARDED, LOST_AGENT_STATUS, READY, read_exit

RELAY_MODULE = "vmsandbox.runtime.relay_main"
log = logging.getLogger(__name__)
forkserver.preload(RELAY_MODULE)

__all__ = [
    "EXIT_FILE",
    "FORWARDED",
    "LOST_AGENT_STATUS",
    "READY",
    "RelayConfig",
    "read_exit",
    "spawn_relay",
]


class RelayConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    container_id: str
    handle: VMHandle
    #: The caller's stdin, stdout and stderr (or the host pty slave three times).
    stdio: tuple[int, int, int]
    terminal: bool
    log_path: Path
    relay_log: Path
    hypervisor_config: HypervisorConfig
    log_limits: LogLimits = LogLimits()
    #: Where the container's exit code is written when it ends.
    exit_path: Path | None = None


def spawn_relay(config: RelayConfig, timeout: float = 15.0) -> int:
    """Start the relay (forked by the state root's fork server, else exec'd; then forked off in
    a session of its own); return its pid once it is attached to the container's output."""
    agent = driver_for(config.handle.hypervisor, config.hypervisor_config).connect(config.handle)
    ready_r, ready_w = os.pipe()
    config_r, config_w = os.pipe()
    try:
        launcher = _launch(config, ready_w, config_r, agent.fileno())
    finally:
        os.close(ready_w)
        os.close(config_r)
        agent.close()
    with os.fdopen(config_w, "w") as pipe:
        pipe.write(json.dumps(_child_config(config)))
    try:
        pid, ok = _read_ready(ready_r, timeout)
    finally:
        os.close(ready_r)
    if not ok:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.kill()  # a Popen not yet reaped, so the pid is still the launcher's
    launcher.wait()  # the launcher exits as soon as it has forked the relay off
    if not ok:
        detail = _tail(config.relay_log) or "no diagnostics"
        raise AgentError(f"the relay did not attach to the container: {detail}", step="relay")
    return pid


class _Forked:
    """The fork server's child that launches the relay (the server reaps it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = start_time(pid)

    def kill(self) -> None:
        signal_recorded(self.pid, self.started, signal.SIGKILL)

    def wait(self) -> None:
        deadline = time.monotonic() + 5
        while running(self.pid, self.started) and time.monotonic() < deadline:
            time.sleep(0.002)


def _launch(
    config: RelayConfig, ready_w: int, config_r: int, agent: int
) -> subprocess.Popen[bytes] | _Forked:
    """The relay's launcher: a child of the state root's fork server (no interpreter start), where
    the settings ask for one for this backend, or a new interpreter: when they do not, when the
    server was started by another process (its orphans would not come back to this caller's
    subreaper, as the relay's must), or when it fails (logged)."""
    vms_dir = config.handle.state_dir.parent
    settings = config.hypervisor_config
    process = config.handle.hypervisor == "process"
    wanted = settings.relay_forkserver or (process and settings.process_forkserver)
    if wanted and forkserver.started_here(vms_dir):
        argv = ["--ready-fd=3", "--config-fd=4", "--agent-fd=5"]
        fds = [*config.stdio, ready_w, config_r, agent]
        try:
            return _Forked(forkserver.run(vms_dir, RELAY_MODULE, argv, fds))
        except (HypervisorError, OSError) as exc:
            log.warning("starting the relay of %s as a new process: %s", config.container_id, exc)
    return subprocess.Popen(
        [
            sys.executable,
            "-S",  # no site: a large share of start-up; the relay imports only this package
            "-m",
            RELAY_MODULE,
            f"--ready-fd={ready_w}",
            f"--config-fd={config_r}",
            f"--agent-fd={agent}",
        ],
        stdin=config.stdio[0],
        stdout=config.stdio[1],
        stderr=config.stdio[2],
        pass_fds=(ready_w, config_r, agent),
        start_new_session=True,
        env=_relay_env(),
    )


def _read_ready(ready_r: int, timeout: float) -> tuple[int, bool]:
    """(the relay's pid or 0, whether it said it is attached) from ``P<pid>\\n`` then ``R``."""
    deadline = time.monotonic() + timeout
    data = b""
    sel = selectors.DefaultSelector()
    sel.register(ready_r, selectors.EVENT_READ)
    try:
        while READY not in data.partition(b"\n")[2]:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(ready_r, 64)
            if not chunk:
                break
            data += chunk
    finally:
        sel.close()
    head, newline, rest = data.partition(b"\n")
    pid = int(head[1:]) if newline and head[:1] == b"P" and head[1:].isdigit() else 0
    return pid, bool(pid) and rest.startswith(READY)


def _relay_env() -> dict[str, str]:
    """The caller's environment, with the directory holding this package first on the path."""
    import vmsandbox

    root = str(Path(vmsandbox.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _child_config(config: RelayConfig) -> dict[str, object]:
    serial = config.handle.endpoints.get(SERIAL_LOG_ENDPOINT)
    cgroup = config.handle.endpoints.get(CGROUP_ENDPOINT)
    return {
        "container_id": config.container_id,
        "terminal": config.terminal,
        "log_path": str(config.log_path),
        "relay_log": str(config.relay_log),
        "max_bytes": config.log_limits.max_bytes,
        "max_files": config.log_limits.max_files,
        "serial_log": serial,
        "exit_path": str(config.exit_path) if config.exit_path is not None else None,
        # Worked out here: the relay starts without site-packages, so it cannot load the drivers.
        "cgroup_procs": [str(path) for path in procs_files(cgroup)],
        "cgroup_namespace": str(host_namespace() or "") if cgroup else "",
        "handle": config.handle.model_dump(mode="json"),
        "hypervisor_config": config.hypervisor_config.model_dump(mode="json"),
    }


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-600:].strip()
    except OSError:
        return ""
