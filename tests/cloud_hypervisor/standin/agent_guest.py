"""The stand-in's guest: the real guest agent, started through the process backend.

"Booting the guest" is :class:`vmsandbox.hypervisor.process.ProcessDriver` starting
``python3 -m vmsandbox.guest serve`` as a namespaced host process; the VM's disks (by serial)
go into the backend's disk table, which it names to the agent with ``VMSANDBOX_GUEST_DISKS``
and which is rewritten on hot-plug. As with a real VM, ``vm.boot`` returns before the guest is
up: the agent starts in the background and CONNECTs are refused until it listens. A guest that
fails to start counts as powered off. A paused VM is a stopped (SIGSTOP) process tree.

A real guest dies with its VMM. So that a SIGKILLed stand-in does not leave its agent behind,
a small watchdog process holds a pipe from the stand-in and stops the agent when it breaks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import IO

from standin.guest import GUEST_AGENT_PORT

from vmsandbox.hypervisor.base import DiskSpec, VMGone, VMHandle, VMSpec
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.process import ProcessDriver

WATCHDOG = Path(__file__).with_name("watchdog.py")


class AgentGuest:
    def __init__(self) -> None:
        #: Created at start (under TMPDIR), removed at stop, or by the watchdog after a crash.
        self._workdir: Path | None = None
        # Each stand-in VM is a process of its own with a state directory of its own: a fork
        # server there would start one more interpreter per VM, not one fewer.
        self._driver = ProcessDriver(HypervisorConfig.load().model_copy(update={"process_forkserver": False}))
        self._handle: VMHandle | None = None
        self._disks: dict[str, str] = {}
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_pipe: IO[bytes] | None = None
        self._booting: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failed = False
        self._stopped = False

    def set_disks(self, disks: dict[str, str], force: bool = False) -> None:
        added = {s: p for s, p in disks.items() if force or self._disks.get(s) != p}
        removed = set(self._disks) - set(disks)
        self._disks = dict(disks)
        if self._handle is not None:
            for serial, path in added.items():
                self._driver.attach_disk(self._handle, DiskSpec(path=Path(path), serial=serial))
            for serial in removed:
                self._driver.detach_disk(self._handle, serial)

    def start(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="ch-standin-"))
        self._start_watchdog(self._workdir)
        self._failed = self._stopped = False
        spec = VMSpec(
            vm_id=f"ch-standin-{os.getpid()}",
            state_dir=self._workdir / "guest",
            disks=[DiskSpec(path=Path(path), serial=serial) for serial, path in self._disks.items()],
            agent_timeout=30.0,
        )
        self._booting = threading.Thread(target=self._boot, args=(spec,), name="guest-boot", daemon=True)
        self._booting.start()

    def _boot(self, spec: VMSpec) -> None:
        try:
            handle = self._driver.boot(spec)
        except Exception:
            print(
                "cloud-hypervisor stand-in: LOUD: the guest agent did not start:\n" + traceback.format_exc(),
                file=sys.stderr,
                flush=True,
            )
            self._failed = True
            return
        with self._lock:
            if self._stopped:
                self._driver.stop(handle)
                return
            self._handle = handle
            pending = dict(self._disks)
        self.set_disks(pending, force=True)

    def _start_watchdog(self, workdir: Path) -> None:
        self._watchdog = subprocess.Popen(
            [sys.executable, str(WATCHDOG), str(workdir), str(workdir / "guest")],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        self._watchdog_pipe = self._watchdog.stdin

    def open_stream(self, port: int) -> socket.socket | None:
        handle = self._handle
        if handle is None or port != GUEST_AGENT_PORT:
            return None
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            stream.connect(handle.endpoints["agent"])
        except OSError:
            stream.close()
            return None
        return stream

    def alive(self) -> bool:
        if self._failed:
            return False
        handle = self._handle
        return handle is None or self._driver.alive(handle)  # still booting counts as alive

    def pause(self) -> None:
        """Stop every process of the guest (the agent and its containers), as paused vCPUs would."""
        if self._handle is not None:
            with contextlib.suppress(VMGone):  # a guest that died is no longer running anyway
                self._driver.pause(self._handle)

    def resume(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(VMGone):
                self._driver.resume(self._handle)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        if self._booting is not None:
            self._booting.join()
            self._booting = None
        handle, self._handle = self._handle, None
        if handle is not None:
            _signal(handle, signal.SIGCONT)
            self._driver.stop(handle)
        if self._watchdog_pipe is not None:
            with contextlib.suppress(OSError):
                self._watchdog_pipe.write(b"q")
                self._watchdog_pipe.close()
            self._watchdog_pipe = None
        if self._watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=10)
            self._watchdog = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _signal(handle: VMHandle, signum: int) -> None:
    """Signal the agent's whole process group (the backend starts it in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(handle.vmm_pid), signum)
