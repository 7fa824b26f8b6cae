"""The ``process`` backend: no VM at all, for development and CI on machines without KVM.

The guest agent runs as an ordinary host process in new mount, PID, UTS and IPC namespaces
(``unshare``), with its own state directory and a unix socket for the host. **It is isolated by
namespaces only**: containers share the host kernel and the host filesystem (the agent is
handed the bundle's rootfs directly, ``shares_host_fs``), and the host network unless the caller
gives a network namespace (``VMSpec.network.netns``; the node agent always does). Never use it
for untrusted workloads.

What is emulated: "boot" is starting the agent process; ``vm_boot`` is the time until its socket
exists. Disks in ``VMSpec.disks`` and hot-plugged ones are recorded in a JSON map named by
``VMSANDBOX_GUEST_DISKS`` so that the agent's block-device path works without a VM. The host's
cgroup hierarchies are shared too: the agent puts its containers under
``/<VMSpec.cgroup>/containers`` (so the sandbox's limits hold them), or ``/vmsandbox/<random>``
for a pooled agent (``VMSANDBOX_GUEST_CGROUP_PARENT``), and :meth:`ProcessDriver.stop` removes
that subtree, which a real VM's cgroups would take with them.

Most of a cold boot is the interpreter starting and importing the agent, so by default the agent
is forked by the state root's fork server (:mod:`vmsandbox.hypervisor.forkserver`), which paid
that once; when it cannot be reached the agent is started as a program (``nsenter`` +
``unshare`` + ``python -m vmsandbox.guest``), and the reason is logged.

Warm pool (``VMSANDBOX_PROCESS_POOL=N``, default 0), in the spirit of kata's VM cache: ``boot``
can instead adopt an idle agent started
earlier, by renaming its directory into place (the agent addresses everything relative to its
working directory, so it does not notice), and start a replacement in the background. Idle
agents outlive the calls that started them; :meth:`ProcessDriver.drain_pool` stops them.

Like a VMM, the agent is started in a session of its own and in the sandbox's cgroup
(``VMSpec.cgroup``), never as the caller's child (:mod:`vmsandbox.hypervisor.detached`); a
pooled agent, started before its sandbox was known, is moved into that cgroup when taken.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import ClassVar

from vmsandbox.hypervisor import forkserver
from vmsandbox.hypervisor.base import (
    CGROUP_ENDPOINT,
    BootTimings,
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    HypervisorName,
    VMGone,
    VMHandle,
    VMSpec,
    check_socket_path,
    connect_unix,
)
from vmsandbox.hypervisor.cgroups import VMCgroup, procs_files, rmdir_retried
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.detached import kill_session, spawn_detached, waiter_gone
from vmsandbox.hypervisor.procs import (
    continue_tree,
    running,
    start_time,
    stop_tree,
    tree_stopped,
)

ISOLATION_NOTE = "the process backend is isolated by Linux namespaces only (no VM): not for untrusted code"
UNSHARE = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--uts", "--ipc"]
UNSHARE += ["--propagation", "private", "--mount-proc"]
DISKS_FILE = "disks.json"
CGROUP_FILE = "cgroup.parent"
#: Each agent's containers live in cgroups under ``/vmsandbox/<random>`` in every hierarchy.
CGROUP_ROOT = "/vmsandbox"
PID_FILE = "vmm.pid"
#: ``"<pid> <start time>"`` of the agent's waiter (:mod:`vmsandbox.hypervisor.detached`).
WAITER_FILE = "waiter"
POOL_DIR = ".pool"

log = logging.getLogger(__name__)


def _agent_pythonpath() -> str:
    """The directory holding this very package: all the agent imports besides the standard library.

    The agent runs with ``-S``: skipping ``site`` (and whatever ``.pth`` files it would run) is a
    large share of its start-up time, and it needs nothing from site-packages.
    """
    import vmsandbox

    return str(Path(vmsandbox.__file__).resolve().parent.parent)


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

    def __init__(self, config: HypervisorConfig, pool_size: int | None = None) -> None:
        self.config = config
        self.pool_size = config.process_pool if pool_size is None else pool_size

    def boot(self, spec: VMSpec) -> VMHandle:
        check_socket_path(spec.state_dir / "agent.sock")
        # Pooled agents were started in the host's network namespace: a sandbox with a network
        # of its own always starts a fresh agent inside it.
        pooled = self.pool_size and spec.network is None
        handle = self._adopt(spec) if pooled else None
        if handle is None:
            handle = self._cold_boot(spec)
        if self.pool_size:
            self._refill(pool_dir(spec.state_dir.parent))
        return handle

    def _spawn(
        self, state_dir: Path, netns: Path | None = None, cgroup: str | None = None, *, fork: bool = True
    ) -> tuple[int, float]:
        """Start an agent whose "VM" directory is ``state_dir``; returns its pid and the spawn time.

        With ``netns`` the agent (and so every container in it) lives in that network namespace.
        With ``fork`` (and ``process_forkserver`` set) it is forked by the fork server of
        ``state_dir``'s parent, else (or when that fails) started as a new interpreter.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        sock_path = check_socket_path(state_dir / "agent.sock")
        env = dict(os.environ)
        env["PYTHONPATH"] = _agent_pythonpath()
        # Relative to the agent's working directory (its state dir), so it survives a rename.
        env["VMSANDBOX_GUEST_DISKS"] = f"../{DISKS_FILE}"
        # Under the sandbox's own cgroup when it has one, so its limits hold the containers too.
        cgroup_parent = f"/{cgroup}/containers" if cgroup else f"{CGROUP_ROOT}/{secrets.token_hex(8)}"
        env["VMSANDBOX_GUEST_CGROUP_PARENT"] = cgroup_parent
        (state_dir / CGROUP_FILE).write_text(cgroup_parent)
        serve = ["serve", "--listen", f"unix:{sock_path}", "--state-dir", str(state_dir / "guest")]
        serve += ["--oci-runtime", self.config.oci_runtime]
        t0 = time.monotonic()
        pid = (
            self._fork(state_dir, serve, env, netns, cgroup)
            if fork and self.config.process_forkserver
            else None
        )
        if pid is not None:
            (state_dir / WAITER_FILE).write_text("")  # the child leads its own session
        else:
            cmd = [
                *(["nsenter", f"--net={netns}"] if netns is not None else []),
                *UNSHARE,
                *[sys.executable, "-S", "-m", "vmsandbox.guest", *serve],
            ]
            with (state_dir / "agent.log").open("ab") as log:
                proc = spawn_detached(cmd, log=log, cgroup_procs=procs_files(cgroup), env=env)
            (state_dir / WAITER_FILE).write_text(proc.waiter)
            pid = proc.pid
        (state_dir / PID_FILE).write_text(str(pid))
        return pid, (time.monotonic() - t0) * 1000

    @staticmethod
    def _fork(
        state_dir: Path, serve: list[str], env: dict[str, str], netns: Path | None, cgroup: str | None
    ) -> int | None:
        """The agent forked by the state root's fork server; None (and why, logged) when it
        cannot be, so that the caller starts it as a new process instead."""
        request = {
            "argv": serve,
            "env": env,
            "cwd": os.getcwd(),
            "log": str(state_dir / "agent.log"),
            "netns": str(netns) if netns is not None else None,
            "cgroup_procs": [str(p) for p in procs_files(cgroup)],
            "title": ["vmsandbox-guest", "(forked)", *serve],
        }
        try:
            return forkserver.spawn(state_dir.parent, request)
        except HypervisorError as exc:
            log.warning("starting the agent of %s as a new process: %s", state_dir.name, exc)
        except OSError as exc:
            log.warning("starting the agent of %s as a new process: fork server: %s", state_dir.name, exc)
        return None

    def _handle(self, spec: VMSpec, pid: int) -> VMHandle:
        disks = spec.state_dir / DISKS_FILE
        tmp = disks.with_suffix(".tmp")
        tmp.write_text(json.dumps({d.serial: str(d.path) for d in spec.disks}))
        tmp.replace(disks)
        cgroup = {CGROUP_ENDPOINT: spec.cgroup} if spec.cgroup else {}
        return VMHandle(
            vm_id=spec.vm_id,
            hypervisor=self.name,
            state_dir=spec.state_dir,
            vmm_pid=pid,
            endpoints={
                "vmm_start": start_time(pid) or "",
                "agent": str(spec.state_dir / "agent.sock"),
                "disks": str(disks),
                "cgroup_parent": (spec.state_dir / CGROUP_FILE).read_text(),
                "waiter": _read(spec.state_dir / WAITER_FILE),
                **cgroup,
            },
        )

    def _cold_boot(self, spec: VMSpec) -> VMHandle:
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        (spec.state_dir / DISKS_FILE).write_text("{}")
        pid, spawn_ms = self._spawn(spec.state_dir, spec.network.netns if spec.network else None, spec.cgroup)
        handle = self._handle(spec, pid)
        handle.save()  # before the wait: a killed creator's agent can then be found and stopped
        t1 = time.monotonic()
        try:
            t2 = self._wait_ready(handle, spec.agent_timeout)
            handle.timings = BootTimings(
                vmm_start=spawn_ms, vm_boot=(t2 - t1) * 1000, agent_ready=(time.monotonic() - t2) * 1000
            )
            handle.save()
        except BaseException:
            self.stop(handle)
            raise
        return handle

    def _adopt(self, spec: VMSpec) -> VMHandle | None:
        """Take an idle pooled agent by renaming its directory to ``spec.state_dir`` (atomic)."""
        pool = pool_dir(spec.state_dir.parent)
        entries = sorted(pool.iterdir()) if pool.is_dir() else []
        for entry in entries:
            # Only an agent that already bound its socket has finished using its old path.
            if not (entry / PID_FILE).exists() or not (entry / "agent.sock").exists():
                continue
            try:
                entry.rename(spec.state_dir)
            except OSError:
                continue  # another boot took it first
            handle = self._handle(spec, int((spec.state_dir / PID_FILE).read_text()))
            t0 = time.monotonic()
            try:
                if spec.cgroup:
                    _move_tree(handle.vmm_pid, VMCgroup(spec.cgroup))
                self._wait_ready(handle, spec.agent_timeout)
            except HypervisorError:
                self.stop(handle)
                continue
            handle.timings = BootTimings(agent_ready=(time.monotonic() - t0) * 1000)
            handle.save()
            return handle
        return None

    def _refill(self, pool: Path) -> None:
        """Start agents in the background until the pool holds ``pool_size`` of them."""
        pool.mkdir(parents=True, exist_ok=True)
        missing = self.pool_size - sum(1 for _ in pool.iterdir())
        for _ in range(max(0, missing)):
            entry = pool / f"p{secrets.token_hex(6)}"
            entry.mkdir()
            (entry / DISKS_FILE).write_text("{}")
            self._spawn(entry, fork=False)  # a pool is the alternative to forking

    @classmethod
    def drain_pool(cls, vms_dir: Path) -> None:
        """Stop every idle pooled agent under ``vms_dir`` and remove the pool; stop the fork
        server of ``vms_dir`` too (running agents stay; the next boot starts a new server)."""
        forkserver.stop(vms_dir)
        pool = pool_dir(vms_dir)
        if not pool.is_dir():
            return
        for entry in pool.iterdir():
            try:
                pid = int((entry / PID_FILE).read_text())
            except (OSError, ValueError):
                shutil.rmtree(entry, ignore_errors=True)
                continue
            _kill_group(pid, None, _read(entry / WAITER_FILE))
            with contextlib.suppress(OSError):
                remove_cgroups((entry / CGROUP_FILE).read_text())
            shutil.rmtree(entry, ignore_errors=True)
        with contextlib.suppress(OSError):
            pool.rmdir()

    def _wait_ready(self, handle: VMHandle, timeout: float) -> float:
        """Wait for the socket, then for a ping answer; returns when the socket appeared."""
        deadline = time.monotonic() + timeout
        sock_path = Path(handle.endpoints["agent"])
        appeared: float | None = None
        last_error = "no socket yet"
        while time.monotonic() < deadline:
            if not _alive(handle.vmm_pid):
                _reap(handle.vmm_pid)
                raise HypervisorError(f"guest agent exited: {self._log_tail(handle)}", step="agent ready")
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
        return connect_unix(handle.endpoints["agent"], handle.vm_id, lambda: _alive(handle.vmm_pid), timeout)

    def attach_disk(self, handle: VMHandle, disk: DiskSpec) -> None:
        mapping = self._disk_table(handle)
        mapping[disk.serial] = str(disk.path)
        self._save_disk_table(handle, mapping)

    def detach_nic(self, handle: VMHandle) -> None:
        """Nothing to unplug: the agent's network is its namespace's, set up before it starts."""

    def detach_disk(self, handle: VMHandle, serial: str) -> None:
        mapping = self._disk_table(handle)
        if mapping.pop(serial, None) is not None:
            self._save_disk_table(handle, mapping)

    @staticmethod
    def _disk_table(handle: VMHandle) -> dict[str, str]:
        table = Path(handle.endpoints["disks"])
        return dict(json.loads(table.read_text())) if table.exists() else {}

    @staticmethod
    def _save_disk_table(handle: VMHandle, mapping: dict[str, str]) -> None:
        table = Path(handle.endpoints["disks"])
        tmp = table.with_suffix(".tmp")
        tmp.write_text(json.dumps(mapping))
        tmp.replace(table)

    def alive(self, handle: VMHandle) -> bool:
        return running(handle.vmm_pid, handle.endpoints.get("vmm_start") or None)

    def pause(self, handle: VMHandle) -> None:
        """SIGSTOP the agent's whole process tree (unshare, the agent, every container process).

        Chosen over the cgroup freezer because the tree is exactly the "VM": everything runs in
        unshare's PID namespace, so it is the agent and its descendants, whereas the freezer
        would hold the containers' cgroups only (the agent shares the caller's), needs a
        writable freezer hierarchy, and differs between cgroup v1 and v2. The walk repeats
        until no process of the tree is still running, so a process forked mid-walk is caught.
        """
        if not _alive(handle.vmm_pid):
            raise VMGone(f"VM {handle.vm_id} is not running", step="pause")
        stop_tree(handle.vmm_pid)

    def resume(self, handle: VMHandle) -> None:
        if not _alive(handle.vmm_pid):
            raise VMGone(f"VM {handle.vm_id} is not running", step="resume")
        continue_tree(handle.vmm_pid)

    def paused(self, handle: VMHandle) -> bool:
        return _alive(handle.vmm_pid) and tree_stopped(handle.vmm_pid)

    def stop(self, handle: VMHandle) -> None:
        _kill_group(handle.vmm_pid, handle.endpoints.get("vmm_start") or None, handle.endpoints.get("waiter"))
        if "cgroup_parent" in handle.endpoints:
            remove_cgroups(handle.endpoints["cgroup_parent"])
        Path(handle.endpoints.get("agent", handle.state_dir / "agent.sock")).unlink(missing_ok=True)
        shutil.rmtree(handle.state_dir, ignore_errors=True)


def cgroup_mounts() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy on this host."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if "-" in fields and fields[fields.index("-") + 1] in ("cgroup", "cgroup2"):
                mounts.append(Path(fields[4]))
    return mounts


def remove_cgroups(parent: str, timeout: float = 5.0) -> None:
    """Remove the cgroups under ``parent`` in every hierarchy, deepest first.

    The agent's containers are dead by now, but the kernel may take a moment to empty their
    cgroups, so ``rmdir`` is retried for a while (EBUSY) before giving up.
    """
    deadline = time.monotonic() + timeout
    for mount in cgroup_mounts():
        top = mount / parent.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*dirs, top]:
            try:
                rmdir_retried(directory, deadline)
            except OSError as exc:
                raise HypervisorError(f"cannot remove cgroup {directory}: {exc}", step="stop") from exc


def pool_dir(vms_dir: Path) -> Path:
    return vms_dir / POOL_DIR


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _kill_group(pid: int, started: str | None = None, waiter: str | None = None) -> None:
    """SIGKILL unshare's session (its waiter, the agent, and with it its PID namespace), each only
    while it is still the very process that was started (``started``, the waiter's identity)."""
    kill_session(pid, started, waiter)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.005)
    _reap(pid)
    if _alive(pid) or not waiter_gone(waiter):
        raise HypervisorError(f"guest agent process {pid} survived SIGKILL", step="stop")


def _move_tree(pid: int, cgroup: VMCgroup) -> None:
    """Move a pooled agent and every process under it into the sandbox's cgroup."""
    pending = [pid]
    while pending:
        current = pending.pop()
        cgroup.join(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pending.extend(int(child) for child in task.read_text().split())
