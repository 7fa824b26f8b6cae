"""The ``process`` backend: no VM at all, for development and CI on machines without KVM.

The guest agent runs as an ordinary host process in new mount, PID, UTS and IPC namespaces
(``unshare``), with its own state directory and a unix socket for the host. **It is isolated by
namespaces only**: containers share the host kernel, the host network and the host filesystem
(the agent is handed the bundle's rootfs directly, ``shares_host_fs``). Never use it for
untrusted workloads.

What is emulated: "boot" is starting the agent process; ``vm_boot`` is the time until its socket
exists. Disks in ``VMSpec.disks`` and hot-plugged ones are recorded in a JSON map named by
``VMSANDBOX_GUEST_DISKS`` so that the agent's block-device path works without a VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

from vmsandbox.hypervisor.base import (
    BootTimings,
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    HypervisorName,
    VMHandle,
    VMSpec,
    check_socket_path,
)
from vmsandbox.hypervisor.config import HypervisorConfig

ISOLATION_NOTE = "the process backend is isolated by Linux namespaces only (no VM): not for untrusted code"
UNSHARE = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--uts", "--ipc"]
UNSHARE += ["--propagation", "private", "--mount-proc"]
DISKS_FILE = "disks.json"


def _agent_pythonpath() -> str:
    """This interpreter's import path, led by the directory holding this very package.

    The agent runs with ``-S``: skipping ``site`` (and whatever ``.pth`` files it would run)
    is a large share of its start-up time, and the explicit path makes up for it.
    """
    import vmsandbox

    package_root = str(Path(vmsandbox.__file__).resolve().parent.parent)
    entries = [package_root, *(p for p in sys.path if p and os.path.isdir(p) and p != package_root)]
    return os.pathsep.join(entries)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def ping(sock: socket.socket, timeout: float) -> None:
    """One ping round trip; raises when the agent does not answer properly."""
    from vmsandbox.guest.protocol import Ping, Pong, recv_reply, send_frame

    sock.settimeout(timeout)
    send_frame(sock, Ping())
    reply = recv_reply(sock)
    if not isinstance(reply, Pong):
        raise HypervisorError(f"agent answered ping with {reply.type}", step="agent ready")


class ProcessDriver(HypervisorDriver):
    """Runs the guest agent as a namespaced host process; isolated by namespaces only (no VM)."""

    name: ClassVar[HypervisorName] = "process"
    shares_host_fs: ClassVar[bool] = True

    def __init__(self, config: HypervisorConfig) -> None:
        self.config = config

    def boot(self, spec: VMSpec) -> VMHandle:
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        sock_path = check_socket_path(spec.state_dir / "agent.sock")
        disks = spec.state_dir / DISKS_FILE
        disks.write_text(json.dumps({d.serial: str(d.path) for d in spec.disks}))
        env = dict(os.environ)
        env["PYTHONPATH"] = _agent_pythonpath()
        env["VMSANDBOX_GUEST_DISKS"] = str(disks)
        cmd = [
            *UNSHARE,
            sys.executable,
            "-S",
            "-m",
            "vmsandbox.guest",
            "serve",
            "--listen",
            f"unix:{sock_path}",
            "--state-dir",
            str(spec.state_dir / "guest"),
            "--oci-runtime",
            self.config.oci_runtime,
        ]
        t0 = time.monotonic()
        with (spec.state_dir / "agent.log").open("ab") as log:
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
                )
            except OSError as exc:
                raise HypervisorError(f"cannot start the guest agent: {exc}", step="vmm start") from exc
        handle = VMHandle(
            vm_id=spec.vm_id,
            hypervisor=self.name,
            state_dir=spec.state_dir,
            vmm_pid=proc.pid,
            endpoints={"agent": str(sock_path), "disks": str(disks)},
        )
        t1 = time.monotonic()
        try:
            t2 = self._wait_ready(handle, proc, spec.agent_timeout)
            handle.timings = BootTimings(
                vmm_start=(t1 - t0) * 1000,
                vm_boot=(t2 - t1) * 1000,
                agent_ready=(time.monotonic() - t2) * 1000,
            )
            handle.save()
        except BaseException:
            self.stop(handle)
            raise
        return handle

    def _wait_ready(self, handle: VMHandle, proc: subprocess.Popen[bytes], timeout: float) -> float:
        """Wait for the socket, then for a ping answer; returns when the socket appeared."""
        deadline = time.monotonic() + timeout
        sock_path = Path(handle.endpoints["agent"])
        appeared: float | None = None
        last_error = "no socket yet"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HypervisorError(
                    f"guest agent exited with status {proc.returncode}: {self._log_tail(handle)}",
                    step="agent ready",
                )
            if sock_path.exists():
                appeared = appeared or time.monotonic()
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                        sock.connect(str(sock_path))
                        ping(sock, max(0.1, deadline - time.monotonic()))
                    return appeared
                except OSError as exc:
                    last_error = str(exc)
            time.sleep(0.005)
        raise HypervisorError(
            f"guest agent did not answer within {timeout}s ({last_error}): {self._log_tail(handle)}",
            step="agent ready",
        )

    @staticmethod
    def _log_tail(handle: VMHandle) -> str:
        try:
            text = (handle.state_dir / "agent.log").read_text(errors="replace")
        except OSError:
            return "no agent log"
        return text[-800:].strip() or "empty agent log"

    def connect(self, handle: VMHandle, timeout: float = 10.0) -> socket.socket:
        path = handle.endpoints["agent"]
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return sock
            except OSError as exc:
                sock.close()
                if not _alive(handle.vmm_pid):
                    raise HypervisorError(f"VM {handle.vm_id} is not running", step="connect") from exc
                if time.monotonic() >= deadline:
                    raise HypervisorError(
                        f"cannot reach the guest agent at {path}: {exc}", step="connect"
                    ) from exc
                time.sleep(0.01)

    def attach_disk(self, handle: VMHandle, disk: DiskSpec) -> None:
        table = Path(handle.endpoints["disks"])
        mapping = json.loads(table.read_text()) if table.exists() else {}
        mapping[disk.serial] = str(disk.path)
        tmp = table.with_suffix(".tmp")
        tmp.write_text(json.dumps(mapping))
        tmp.replace(table)

    def alive(self, handle: VMHandle) -> bool:
        return _alive(handle.vmm_pid)

    def stop(self, handle: VMHandle) -> None:
        pid = handle.vmm_pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.005)
        _reap(pid)
        if _alive(pid):
            raise HypervisorError(f"guest agent process {pid} survived SIGKILL", step="stop")
        Path(handle.endpoints.get("agent", handle.state_dir / "agent.sock")).unlink(missing_ok=True)
        _remove_tree(handle.state_dir)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
