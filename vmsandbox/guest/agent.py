"""The guest agent's request loop: one thread per host connection, one reply per request.

``attach`` turns its connection into a stream: output frames go out as the container writes,
stdin and resize frames come in, and :class:`Exited` ends it once no more output can come.
"""

from __future__ import annotations

import _socket
import fcntl
import os
import struct
import termios
import threading
from functools import partial

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.logs import log
from vmsandbox.guest.ociruntime import RuntimeSelector
from vmsandbox.guest.protocol import (
    ATTACH_INPUT,
    REQUEST,
    Attach,
    Attached,
    ConfigureNetwork,
    ContainerList,
    CreateContainer,
    CreateSandbox,
    DestroyContainer,
    Exec,
    Exited,
    Failure,
    GetState,
    ListContainers,
    ListPath,
    Ok,
    Output,
    Ping,
    Pong,
    ProtocolError,
    ReadPath,
    Reply,
    Request,
    Resize,
    SignalContainer,
    StartContainer,
    StdinClose,
    StdinData,
    WaitExit,
    WritePath,
    decode,
    recv_frame_bytes,
    send_frame,
)
from vmsandbox.guest.transport import Listener

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmsandbox.guest.containers import Container, ContainerTable
    from vmsandbox.guest.ociruntime import RuntimeChoice


class Agent:
    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        oci_runtime: RuntimeChoice,
        before_containers: Callable[[], None] | None = None,
    ) -> None:
        """``before_containers`` runs once, before the container machinery is first used."""
        os.makedirs(state_dir, exist_ok=True)
        # Everything below is addressed relative to the state directory, our working directory,
        # so an idle agent's directory can be renamed (the process backend's warm pool).
        os.chdir(state_dir)
        self.selector = RuntimeSelector(oci_runtime, ".")
        self._before_containers = before_containers
        self._table: ContainerTable | None = None
        self._table_lock = threading.Lock()
        #: Guest uptimes (seconds) when init began and when this agent was listening; set in a VM.
        self.init_uptime: float | None = None
        self.ready_uptime: float | None = None

    @property
    def table(self) -> ContainerTable:
        """The container machinery, imported on first use or by :meth:`preload`.

        Its imports (subprocess, pathlib...) are most of the agent's own; loading them after the
        agent listens keeps them off the boot's path to the first request. logging is not among
        them: it loads at the first message, and a create that goes well says nothing.
        """
        with self._table_lock:
            if self._table is None:
                from vmsandbox.guest.containers import ContainerTable

                if self._before_containers is not None:
                    self._before_containers()
                self._table = ContainerTable(".", self.selector)
            return self._table

    def preload(self) -> None:
        """Load the container machinery in the background while the host prepares its requests,
        then what the first create's mounts need (ctypes), which the host does not wait for
        before that create."""
        threading.Thread(target=self._preload, name="preload", daemon=True).start()

    def _preload(self) -> None:
        from vmsandbox.guest.disks import load_libc

        _ = self.table  # loaded now rather than by the first request
        load_libc()

    def serve(self, listener: Listener) -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError as exc:
                log.info("listener closed: %s", exc)
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: _socket.socket) -> None:
        try:  # the C socket type is no context manager
            while True:
                body = recv_frame_bytes(conn)
                if body is None:
                    return
                req: Request = decode(REQUEST, body)
                if isinstance(req, Attach):
                    self._attach(conn, req)
                    return
                if isinstance(req, Exec | ReadPath | WritePath):
                    self._stream(conn, req)
                    return
                send_frame(conn, self._reply(req))
        except (OSError, ProtocolError) as exc:
            log.info("connection ended: %s", exc)
        finally:
            conn.close()

    def _reply(self, req: Request) -> Reply:
        try:
            return self.handle(req)
        except VMSandboxError as exc:
            return Failure(step=exc.step, detail=exc.detail)
        except OSError as exc:
            return Failure(step=f"guest {req.op}", detail=str(exc))

    def handle(self, req: Request) -> Reply:
        if isinstance(req, Ping):
            return Pong(
                agent_pid=os.getpid(),
                oci_runtime=self.selector.describe(),
                init_uptime=self.init_uptime,
                ready_uptime=self.ready_uptime,
            )
        if isinstance(req, CreateSandbox):
            self.table.sandbox_id = req.sandbox_id
            if req.hostname:
                _socket.sethostname(req.hostname)
            if req.hostname or req.dns is not None:
                from vmsandbox.guest.etcfiles import write_sandbox_files

                self.table.sandbox_files = write_sandbox_files(
                    os.path.join(self.table.state_dir, "sandbox-etc"), req.hostname, req.dns, req.ip
                )
            # Only the agent a VM's init started (it passes --init-uptime) owns its kernel; an
            # agent on a host (the process backend, the stand-in) never touches the host's.
            if self.init_uptime is not None and (req.entropy is not None or req.clock is not None):
                from vmsandbox.guest.identity import add_entropy, set_clock

                if req.entropy is not None:
                    add_entropy(req.entropy)
                if req.clock is not None:
                    set_clock(req.clock)
            return Ok()
        if isinstance(req, ConfigureNetwork):
            # Only the agent a VM's init started owns its kernel's network; an agent on a host
            # (the process backend, the stand-in) must never configure the host's interfaces.
            if self.init_uptime is None:
                raise VMSandboxError("this agent does not own a VM's network", step="guest network")
            from vmsandbox.guest.nic import configure

            configure(req)  # silently, as a create that goes well: logging loads at a first message
            return Ok()
        if isinstance(req, CreateContainer):
            return self.table.create(req).info()
        if isinstance(req, StartContainer):
            return self.table.start(req.container_id).info()
        if isinstance(req, GetState):
            return self.table.get(req.container_id).info()
        if isinstance(req, SignalContainer):
            self.table.signal(req.container_id, req.signal)
            return Ok()
        if isinstance(req, WaitExit):
            code = self.table.get(req.container_id).wait_exit(req.timeout)
            if code is None:
                return Failure(step="wait", detail=f"container still running after {req.timeout}s")
            return Exited(exit_code=code)
        if isinstance(req, DestroyContainer):
            self.table.destroy(req.container_id)
            return Ok()
        if isinstance(req, ListContainers):
            return ContainerList(containers=[c.info() for c in self.table.all()])
        if isinstance(req, ListPath):
            from vmsandbox.guest.files import list_path

            return list_path(self.table, req)
        raise VMSandboxError(f"request {req.op!r} is not valid here", step="request")

    def _stream(self, conn: _socket.socket, req: Exec | ReadPath | WritePath) -> None:
        """Exec and file transfers, imported on first use: they are not on the start path."""
        if isinstance(req, Exec):
            from vmsandbox.guest.exec import ExecSession

            ExecSession(self.table, conn, req).serve()
        else:
            from vmsandbox.guest.files import serve_stream

            serve_stream(self.table, conn, req)

    # -- attach -------------------------------------------------------------------------

    def _attach(self, conn: _socket.socket, req: Attach) -> None:
        try:
            container = self.table.get(req.container_id)
        except VMSandboxError as exc:
            send_frame(conn, Failure(step=exc.step, detail=exc.detail))
            return
        send_frame(conn, Attached())
        threading.Thread(target=self._attach_input, args=(conn, container), daemon=True).start()
        offset = req.offset
        while True:
            with container.cond:
                container.cond.wait_for(partial(_more_or_done, container, offset), timeout=0.25)
                chunks = container.output.since(offset)
                done = not chunks and container.output_done()
                code = container.exit_code
            for start, stream, data in chunks:
                send_frame(conn, Output.of(stream, data, start))
                offset = start + len(data)
            if done:
                assert code is not None
                send_frame(conn, Exited(exit_code=code))
                return

    def _attach_input(self, conn: _socket.socket, container: Container) -> None:
        try:
            while True:
                body = recv_frame_bytes(conn)
                if body is None:
                    return
                frame = decode(ATTACH_INPUT, body)
                if isinstance(frame, StdinData):
                    fd = container.stdin_fd
                    if fd is not None:
                        os.write(fd, frame.raw())
                elif isinstance(frame, StdinClose):
                    self.table.close_stdin(container)
                elif isinstance(frame, Resize) and container.pty_master is not None:
                    winsize = struct.pack("HHHH", frame.rows, frame.cols, 0, 0)
                    fcntl.ioctl(container.pty_master, termios.TIOCSWINSZ, winsize)
        except (OSError, ProtocolError) as exc:
            log.debug("attach input ended: %s", exc)


def _more_or_done(container: Container, offset: int) -> bool:
    return container.output.end > offset or container.output_done()
