"""The host-side relay: the process whose pid callers see as the container's.

A runc-style caller (containerd's shim, a shell) waits on the pid from ``--pid-file`` and reads
the stdio it gave ``create``. The container runs in a guest where host pids mean nothing, so one
relay per container stands in for it (kata-shim's model): it attaches to the guest agent, copies
output to its own stdout/stderr and to the container log, copies its stdin in, forwards the
signals it receives, and exits with the container's status (128 + signal when one killed it).

The relay is a fresh interpreter (:mod:`vmsandbox.runtime.relay_main`), never a fork of its
creator: the creator may be the multi-threaded agent, and a forked child could inherit a lock
some other thread held at that instant. So that it starts in tens of milliseconds, the relay
imports little: the creator connects to the guest agent and hands it the connected socket with
the configuration, and a driver of its own is built only when a signal must be forwarded. And
so that even those milliseconds are off a create's path, it is launched as the create begins
and handed its container when that exists (:class:`PendingRelay`).

Like the VMM, the relay must outlive its creator, even a node agent whose whole cgroup a container
runtime killed: the fresh interpreter (single-threaded, so it may fork) joins the VM's cgroup,
is in a session of its own and forks once more, so that the relay is no child of the creator.
The container's exit code goes to a file as well as to its exit status, for whoever asks later.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
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
from vmsandbox.runtime.relay_main import (
    EXIT_FILE,
    FORWARDED,
    LOST_AGENT_STATUS,
    READY,
    RELAY_LOG,
    read_exit,
)

RELAY_MODULE = "vmsandbox.runtime.relay_main"
#: How long a launcher may take to exit once it has forked the relay off or been abandoned.
LAUNCHER_EXIT_SECONDS = 5.0
log = logging.getLogger(__name__)
forkserver.preload(RELAY_MODULE)

__all__ = [
    "EXIT_FILE",
    "FORWARDED",
    "LOST_AGENT_STATUS",
    "READY",
    "RELAY_LOG",
    "PendingRelay",
    "RelayConfig",
    "read_exit",
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


class PendingRelay:
    """A relay launched before its container exists, attached to it once it does.

    A new interpreter takes tens of milliseconds to import the relay, so it is started first and
    imports while the VM boots and the guest creates the container; then :meth:`attach` hands it
    its configuration, the connection to the guest agent and its stdio over a socket
    (``SCM_RIGHTS``). A relay the fork server forks starts at once, so that one is launched only
    in :meth:`attach`. A relay never attached (:meth:`abandon`, or its creator died) reads the
    end of the socket and exits, with nothing to undo."""

    def __init__(self, hypervisor: str, settings: HypervisorConfig, vms_dir: Path, relay_log: Path) -> None:
        self.vms_dir = vms_dir
        self.relay_log = relay_log
        wanted = settings.relay_forkserver or (hypervisor == "process" and settings.process_forkserver)
        self.forked = wanted and forkserver.started_here(vms_dir)
        self._launcher: subprocess.Popen[bytes] | _Forked | None = None
        self._ready_r = -1
        self._config: socket.socket | None = None
        if not self.forked:
            self._launch(None)

    def attach(self, config: RelayConfig, timeout: float = 15.0) -> int:
        """Hand the relay its container; its pid once it is attached to the container's output."""
        if self._launcher is None:
            self._launch(config)
        try:
            pid, ok = self._hand_over(config, timeout)
        except BaseException:
            self._finish(kill=True)
            raise
        if not ok and pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._finish(kill=not ok)
        if not ok:
            detail = _tail(config.relay_log) or "no diagnostics"
            raise AgentError(f"the relay did not attach to the container: {detail}", step="relay")
        return pid

    def abandon(self) -> None:
        """The container will not exist: the relay reads the end of its configuration and exits."""
        self._finish(kill=False)

    def _launch(self, config: RelayConfig | None) -> None:
        """The launcher: forked by the state root's fork server where :attr:`forked` (falling back,
        logged, to a new interpreter when the server fails), else a new interpreter."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ready_r, ready_w = os.pipe()
        self._config, self._ready_r = ours, ready_r
        try:
            self._launcher = self._start(config, ready_w, theirs.fileno())
        finally:
            os.close(ready_w)
            theirs.close()

    def _start(
        self, config: RelayConfig | None, ready_w: int, config_fd: int
    ) -> subprocess.Popen[bytes] | _Forked:
        # Until it has its stdio, what the launcher has to say goes to the relay's log, whichever
        # way it was started.
        with open(os.devnull, "r+b") as null, self.relay_log.open("ab") as diagnostics:
            # Asked again: a server another process started since would hand its orphans elsewhere.
            if self.forked and config is not None and forkserver.started_here(self.vms_dir):
                fds = [null.fileno(), null.fileno(), diagnostics.fileno(), ready_w, config_fd]
                argv = ["--ready-fd=3", "--config-fd=4"]
                try:
                    return _Forked(forkserver.run(self.vms_dir, RELAY_MODULE, argv, fds))
                except (HypervisorError, OSError) as exc:
                    log.warning("starting the relay of %s as a new process: %s", config.container_id, exc)
            return subprocess.Popen(
                # -S: it imports only this package
                [
                    sys.executable,
                    "-S",
                    "-m",
                    RELAY_MODULE,
                    f"--ready-fd={ready_w}",
                    f"--config-fd={config_fd}",
                ],
                stdin=null,
                stdout=subprocess.DEVNULL,
                stderr=diagnostics,
                pass_fds=(ready_w, config_fd),
                start_new_session=True,
                env=_relay_env(),
            )

    def _hand_over(self, config: RelayConfig, timeout: float) -> tuple[int, bool]:
        """Send the relay its container and wait for it to attach: (its pid or 0, whether it did)."""
        agent = driver_for(config.handle.hypervisor, config.hypervisor_config).connect(config.handle)
        try:
            self._send(config, agent.fileno())
        except OSError as exc:  # the relay died before it read its configuration
            log.warning("handing the relay of %s its container: %s", config.container_id, exc)
            return 0, False
        finally:
            agent.close()
        return _read_ready(self._ready_r, timeout)

    def _send(self, config: RelayConfig, agent: int) -> None:
        """The configuration, then the end of it; the agent's connection and the caller's stdio
        travel with its first bytes."""
        assert self._config is not None
        body = json.dumps(_child_config(config)).encode()
        sent = self._config.sendmsg(
            [body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [agent, *config.stdio]))]
        )
        self._config.sendall(body[sent:])
        self._config.shutdown(socket.SHUT_WR)

    def _finish(self, kill: bool) -> None:
        """Close this end and reap the launcher, which exits once it has forked the relay off or
        read the end of its configuration."""
        if self._config is not None:
            self._config.close()
            self._config = None
        if self._ready_r >= 0:
            os.close(self._ready_r)
            self._ready_r = -1
        launcher, self._launcher = self._launcher, None
        if launcher is None:
            return
        if kill:
            launcher.kill()  # not yet reaped, so the pid is still the launcher's
        try:
            launcher.wait(LAUNCHER_EXIT_SECONDS)
        except subprocess.TimeoutExpired:  # hung: it must not keep the relay's descriptors
            launcher.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                launcher.wait(LAUNCHER_EXIT_SECONDS)


class _Forked:
    """The fork server's child that launches the relay (the server reaps it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = start_time(pid)

    def kill(self) -> None:
        signal_recorded(self.pid, self.started, signal.SIGKILL)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while running(self.pid, self.started):
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"relay launcher {self.pid}", timeout)
            time.sleep(0.002)


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
