"""The containers of one guest: created through crun/runc, reaped, and their output captured.

The agent is the container inits' reaper (PID 1 of the process backend's PID namespace, or a
child subreaper in a VM), so it learns each exit status with ``waitpid`` and keeps it for the
host, which never sees guest pids.
"""

from __future__ import annotations

import _signal
import _socket
import contextlib
import os
import sys
import threading
import time

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest import jsontext, spawn
from vmsandbox.guest.disks import PreparedRootfs, prepare_rootfs
from vmsandbox.guest.names import valid_container_id
from vmsandbox.guest.ociruntime import OciRuntime, RuntimeSelector
from vmsandbox.guest.protocol import WRONG_STATUS, ContainerInfo, CreateContainer
from vmsandbox.guest.transport import SocketListener

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from subprocess import Popen
    from typing import Any, Literal

    from vmsandbox.guest.protocol import ContainerStatus


#: Output kept in memory per container for late attachers; older bytes are dropped first.
KEEP_OUTPUT = 8 * 1024 * 1024
#: Set when the agent shares the host's cgroup hierarchies (the process backend).
CGROUP_PARENT_ENV = "VMSANDBOX_GUEST_CGROUP_PARENT"
#: After the init exits, how long to wait for stray writers to close stdout/stderr.
EOF_GRACE = 1.0
#: Descriptors one console-socket message may bring: the first is the pty, the rest are closed
#: (the kernel closes any beyond this room itself).
RECEIVED_FDS_ROOM = 4


class ContainerError(VMSandboxError):
    step = "guest container"


def exit_code_of(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128 + the killing signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class OutputCapture:
    """Bytes written by a container, addressed by offset, with a condition to wait for more."""

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self.chunks: list[tuple[int, Literal["stdout", "stderr"], bytes]] = []
        self.end = 0
        self.open_streams = 0

    def append(self, stream: Literal["stdout", "stderr"], data: bytes) -> None:
        with self.cond:
            self.chunks.append((self.end, stream, data))
            self.end += len(data)
            kept = self.end - self.chunks[0][0]
            while kept > KEEP_OUTPUT and len(self.chunks) > 1:
                kept -= len(self.chunks.pop(0)[2])
            self.cond.notify_all()

    def since(self, offset: int) -> list[tuple[int, Literal["stdout", "stderr"], bytes]]:
        """Chunks at or after ``offset`` (call with the condition held)."""
        return [c for c in self.chunks if c[0] >= offset]

    def stream_closed(self) -> None:
        with self.cond:
            self.open_streams -= 1
            self.cond.notify_all()


class Container:
    def __init__(self, container_id: str, workdir: str, terminal: bool) -> None:
        self.id = container_id
        self.workdir = workdir
        self.terminal = terminal
        self.cond = threading.Condition()
        self.output = OutputCapture(self.cond)
        self.status: ContainerStatus = "created"
        self.guest_pid: int | None = None
        self.exit_code: int | None = None
        self.exited_at_mono: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.runtime: OciRuntime | None = None
        self.rootfs: PreparedRootfs | None = None
        #: Where host stdin goes: the stdin pipe's write end, or the pty master.
        self.stdin_fd: int | None = None
        self.pty_master: int | None = None

    def info(self) -> ContainerInfo:
        return ContainerInfo(
            container_id=self.id,
            status=self.status,
            guest_pid=self.guest_pid,
            exit_code=self.exit_code,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )

    # -- background threads -------------------------------------------------------------

    def pump(self, fd: int, stream: Literal["stdout", "stderr"], owns_fd: bool = True) -> None:
        with self.cond:
            self.output.open_streams += 1
        threading.Thread(
            target=self._pump, args=(fd, stream, owns_fd), daemon=True, name=f"pump-{stream}"
        ).start()

    def _pump(self, fd: int, stream: Literal["stdout", "stderr"], owns_fd: bool) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO on a pty master once the last slave fd closes
                    break
                if not data:
                    break
                self.output.append(stream, data)
        finally:
            if owns_fd:
                os.close(fd)
            self.output.stream_closed()

    def reap(self) -> None:
        threading.Thread(target=self._reap, daemon=True, name=f"reap-{self.id}").start()

    def _reap(self) -> None:
        assert self.guest_pid is not None
        try:
            _, status = os.waitpid(self.guest_pid, 0)
            code = exit_code_of(status)
        except ChildProcessError:
            # Not our child (no subreaper): poll until it is gone; the status is unknowable.
            while _pid_alive(self.guest_pid):
                time.sleep(0.05)
            code = 255
        with self.cond:
            self.exit_code = code
            self.status = "stopped"
            self.finished_at = time.time()
            self.exited_at_mono = time.monotonic()
            self.cond.notify_all()

    def wait_exit(self, timeout: float | None) -> int | None:
        with self.cond:
            self.cond.wait_for(lambda: self.exit_code is not None, timeout)
            return self.exit_code

    def output_done(self) -> bool:
        """Whether no more output can come (call with the condition held)."""
        if self.exit_code is None:
            return False
        if self.output.open_streams <= 0:
            return True
        assert self.exited_at_mono is not None
        return time.monotonic() - self.exited_at_mono > EOF_GRACE


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _ConsoleReceiver:
    """The ``--console-socket`` end inside the guest: receives the pty master from crun/runc."""

    def __init__(self) -> None:
        import tempfile  # terminal containers only: off the first create's path

        self.dir = tempfile.mkdtemp(prefix="vmsb-con-")
        self.path = os.path.join(self.dir, "sock")
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.listener = SocketListener(sock)
        sock.bind(self.path)
        sock.listen(1)
        sock.settimeout(0.05)  # accept() wakes to notice a runtime that exited without connecting
        self.master: int | None = None

    def receive(self, proc: spawn.Child | Popen[bytes]) -> None:
        while self.master is None:
            try:
                conn = self.listener.accept()
            except TimeoutError:
                if proc.poll() is not None:
                    return
                continue
            try:
                conn.settimeout(10)
                self.master = _receive_fd(conn)
            finally:
                conn.close()

    def close(self) -> None:
        self.listener.close()
        _remove_tree(self.dir)


def _receive_fd(conn: _socket.socket) -> int | None:
    """The first descriptor of one ``SCM_RIGHTS`` message on ``conn``; any others are closed.

    What ``socket.recv_fds`` does, on the C socket type: the ``socket`` module's enums cost the
    first create under emulation.
    """
    size = 4  # a C int, as SCM_RIGHTS carries descriptors
    _, ancillary, _, _ = conn.recvmsg(4096, _socket.CMSG_LEN(RECEIVED_FDS_ROOM * size))
    fds = [
        int.from_bytes(data[at : at + size], sys.byteorder, signed=True)
        for level, kind, data in ancillary
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
        for at in range(0, len(data) - len(data) % size, size)
    ]
    for extra in fds[1:]:
        _close_quietly(extra)
    if not fds:
        return None
    os.set_inheritable(fds[0], False)  # the kernel hands it over inheritable; no child may get it
    return fds[0]


class ContainerTable:
    """Every container of this guest, keyed by id."""

    def __init__(self, state_dir: str, selector: RuntimeSelector) -> None:
        #: A plain string, as every path here: pathlib (with what it imports) would cost the
        #: first create under emulation.
        self.state_dir = state_dir
        self.selector = selector
        self._lock = threading.Lock()
        self._containers: dict[str, Container] = {}
        self._creating: set[str] = set()
        self.sandbox_id: str | None = None
        #: ``{destination: file}`` every container of the sandbox gets (resolv.conf, hostname, hosts).
        self.sandbox_files: dict[str, str] = {}

    def get(self, container_id: str) -> Container:
        with self._lock:
            container = self._containers.get(container_id)
        if container is None:
            raise ContainerError(f"no container {container_id!r} in this sandbox", step="lookup")
        return container

    def all(self) -> list[Container]:
        with self._lock:
            return list(self._containers.values())

    # -- create -------------------------------------------------------------------------

    def create(self, req: CreateContainer) -> Container:
        cid = req.container_id
        if not valid_container_id(cid):
            raise ContainerError(f"invalid container id {cid!r}", step="create")
        with self._lock:
            if cid in self._containers or cid in self._creating:
                raise ContainerError(f"container {cid!r} already exists", step="create")
            self._creating.add(cid)
        workdir = os.path.join(self.state_dir, "containers", cid)
        container = Container(cid, workdir, req.terminal)
        try:
            os.makedirs(workdir)
            container.rootfs = prepare_rootfs(req.rootfs, workdir)
            bundle = os.path.join(workdir, "bundle")
            os.mkdir(bundle)
            spec = self._guest_spec(req.spec, container)
            if self.sandbox_files:
                from vmsandbox.guest.etcfiles import add_mounts

                add_mounts(spec, self.sandbox_files)
            with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as config:
                config.write(jsontext.dumps(spec))
            self._run_create(container, bundle)
        except BaseException:
            self._discard(container)
            with self._lock:
                self._creating.discard(cid)
            raise
        with self._lock:
            self._creating.discard(cid)
            self._containers[cid] = container
        container.reap()
        return container

    @staticmethod
    def _guest_spec(spec: dict[str, Any], container: Container) -> dict[str, Any]:
        guest = jsontext.loads(jsontext.dumps(spec))  # a deep copy of JSON data, without importing copy
        assert container.rootfs is not None
        root = guest.setdefault("root", {})
        root["path"] = os.path.abspath(container.rootfs.path)
        process = guest.get("process")
        if isinstance(process, dict):
            process["terminal"] = container.terminal
        parent = os.environ.get(CGROUP_PARENT_ENV)
        linux = guest.setdefault("linux", {})
        if parent and isinstance(linux, dict):
            # A guest sharing the host's cgroups keeps its containers under one parent, so that
            # whoever stops it can remove what crun/runc never got to delete.
            own = linux.get("cgroupsPath")
            name = own.strip("/") if isinstance(own, str) and own and ":" not in own else container.id
            linux["cgroupsPath"] = f"{parent.rstrip('/')}/{name}"
        return guest

    def _run_create(self, container: Container, bundle: str) -> None:
        runtime = self.selector.current()
        try:
            self._create_with(runtime, container, bundle)
        except ContainerError as exc:
            if not self.selector.can_fall_back(runtime):
                raise
            self.selector.fall_back(exc.detail)
            self._create_with(self.selector.current(), container, bundle)

    def _create_with(self, runtime: OciRuntime, container: Container, bundle: str) -> None:
        pid_file = os.path.join(container.workdir, "init.pid")
        cmd = [
            *runtime.base(),
            "create",
            "--bundle",
            os.path.abspath(bundle),
            "--pid-file",
            os.path.abspath(pid_file),
        ]
        console: _ConsoleReceiver | None = None
        child_fds: list[int] = []
        parent_fds: list[int] = []
        err_r: int | None = None
        try:
            if container.terminal:
                console = _ConsoleReceiver()
                cmd += ["--console-socket", console.path]
                err_r, err_w = os.pipe()
                parent_fds.append(err_r)
                child_fds.append(err_w)
                null = spawn.open_null()
                child_fds.append(null)
                stdio: tuple[int, int, int] = (null, null, err_w)
            else:
                in_r, in_w = os.pipe()
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                child_fds += [in_r, out_w, err_w]
                parent_fds += [in_w, out_r, err_r]
                stdio = (in_r, out_w, err_w)
            proc = spawn.spawn([*cmd, container.id], *stdio)
            for fd in child_fds:
                os.close(fd)
            child_fds = []
            if console is not None:
                console.receive(proc)
            returncode = proc.wait()
            if returncode != 0:
                os.set_blocking(err_r, False)
                try:
                    message = os.read(err_r, 65536).decode(errors="replace").strip()
                except BlockingIOError:
                    message = ""
                spawn.run([*runtime.base(), "delete", "--force", container.id])
                raise ContainerError(
                    f"{runtime.name} create: {message or f'exit status {returncode}'}", step="create"
                )
            container.guest_pid = read_pid(pid_file)
            container.runtime = runtime
            if console is not None:
                if console.master is None:
                    raise ContainerError(f"{runtime.name} sent no console pty", step="console")
                container.pty_master = console.master
                container.stdin_fd = console.master
                os.close(err_r)
                parent_fds = []
                container.pump(console.master, "stdout", owns_fd=False)
            else:
                in_w, out_r, err_r = parent_fds
                parent_fds = []
                container.stdin_fd = in_w
                container.pump(out_r, "stdout")
                container.pump(err_r, "stderr")
        finally:
            for fd in child_fds + parent_fds:
                os.close(fd)
            if console is not None:
                console.close()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, container_id: str) -> Container:
        container = self.get(container_id)
        with container.cond:
            if container.status != "created":
                raise ContainerError(
                    f"container {container_id!r} is {container.status}, not created", step=WRONG_STATUS
                )
            assert container.runtime is not None
            container.runtime.run("start", container_id, step="start")
            container.status = "running"
            container.started_at = time.time()
        return container

    def signal(self, container_id: str, signum: int) -> None:
        container = self.get(container_id)
        with container.cond:
            if container.exit_code is not None or container.guest_pid is None:
                raise ContainerError(f"container {container_id!r} is {container.status}", step=WRONG_STATUS)
            os.kill(container.guest_pid, signum)

    def destroy(self, container_id: str) -> None:
        container = self.get(container_id)
        with container.cond:
            alive = container.exit_code is None and container.guest_pid is not None
            if alive:
                assert container.guest_pid is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(container.guest_pid, _signal.SIGKILL)
        if alive and container.wait_exit(10.0) is None:
            raise ContainerError(f"container {container_id!r} did not die after SIGKILL", step="destroy")
        self._discard(container)
        with self._lock:
            self._containers.pop(container_id, None)

    def _discard(self, container: Container) -> None:
        if container.runtime is not None:
            spawn.run([*container.runtime.base(), "delete", "--force", container.id])
        if container.stdin_fd is not None and container.stdin_fd != container.pty_master:
            _close_quietly(container.stdin_fd)
            container.stdin_fd = None
        if container.pty_master is not None:
            _close_quietly(container.pty_master)
            container.pty_master = None
        if container.rootfs is not None:
            container.rootfs.release()
        _remove_tree(container.workdir)

    def close_stdin(self, container: Container) -> None:
        with container.cond:
            if container.stdin_fd is not None and container.stdin_fd != container.pty_master:
                _close_quietly(container.stdin_fd)
                container.stdin_fd = None


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def read_pid(path: str) -> int:
    """The pid crun/runc wrote to ``path``."""
    with open(path, encoding="ascii") as pid_file:
        return int(pid_file.read().strip())


def _remove_tree(path: str) -> None:
    """``shutil.rmtree``, ignoring errors; shutil is imported on teardown, not on the way to a create."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
