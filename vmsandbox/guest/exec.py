"""Exec: a new process in a running container, through the container's own runtime (runc/crun ``exec``).

The runtime is run with ``--detach``, so once it has started the process it exits and the
process is re-parented to the agent (a child subreaper, or PID 1 of the process backend's PID
namespace): the agent ``waitpid``s the pid the runtime wrote, which gives the exact status
(128 + n when signal n ended it) and lets signals go to the process itself, SIGKILL included.
stdin, stdout and stderr are three pipes, or one pty whose master the runtime hands over on a
console socket. After the :class:`Streaming` reply the connection carries chunks
(:mod:`vmsandbox.guest.streams`) until the final :data:`~vmsandbox.guest.streams.STATUS` chunk
holding :class:`Exited`.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import signal
import struct
import subprocess
import termios
import threading
import time

from vmsandbox.guest import streams
from vmsandbox.guest.containers import (
    Container,
    ContainerError,
    ContainerTable,
    _ConsoleReceiver,
    exit_code_of,
    read_pid,
)
from vmsandbox.guest.logs import log
from vmsandbox.guest.protocol import WRONG_STATUS, Exec, Exited, Failure, Streaming
from vmsandbox.guest.wire import ProtocolError

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket


#: After the process exits, how long output pipes may stay idle (held open by a background
#: child it left behind) before the exit status is sent anyway.
IDLE_AFTER_EXIT = 1.0
#: The status when the runtime could not start the command at all (a shell's "cannot execute").
CANNOT_RUN = 126
_serial = itertools.count(1)


def running_container(table: ContainerTable, container_id: str) -> Container:
    """The container, refusing one that is not running (nothing to exec into, no root to read)."""
    container = table.get(container_id)
    with container.cond:
        if container.status != "running" or container.exit_code is not None or container.guest_pid is None:
            state = "stopped" if container.exit_code is not None else container.status
            raise ContainerError(f"container {container_id!r} is {state}, not running", step=WRONG_STATUS)
    return container


def set_window(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class _Pump:
    """Copies one output fd to a channel; after the host goes away it keeps draining, so the
    process never blocks on a full pipe."""

    def __init__(self, fd: int, channel: int, writer: streams.ChunkWriter) -> None:
        self.fd = fd
        self.channel = channel
        self.writer = writer
        self.last_read = time.monotonic()
        self.reading = False
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"exec-out-{channel}")
        self.thread.start()

    def _run(self) -> None:
        connected = True
        try:
            while True:
                self.reading = True
                try:
                    data = os.read(self.fd, streams.CHUNK)
                except OSError:  # EIO on a pty master once the last slave closes
                    break
                finally:
                    self.reading = False
                    self.last_read = time.monotonic()
                if not data:
                    break
                if connected:
                    try:
                        self.writer.send(self.channel, data)
                    except OSError:
                        connected = False
        finally:
            os.close(self.fd)

    def idle_since(self, exited_at: float) -> bool:
        """Blocked in a read that brought nothing since the process exited, for IDLE_AFTER_EXIT."""
        return self.reading and time.monotonic() - max(self.last_read, exited_at) > IDLE_AFTER_EXIT


class ExecSession:
    """One exec request, from the runtime's start to the exit status."""

    def __init__(self, table: ContainerTable, conn: _socket.socket, req: Exec) -> None:
        self.table = table
        self.conn = conn
        self.req = req
        self.writer = streams.ChunkWriter(conn)
        self.pid: int | None = None
        self.stdin_fd: int | None = None
        self.pty_master: int | None = None
        self._stdin_lock = threading.Lock()

    def serve(self) -> None:
        try:
            container = running_container(self.table, self.req.container_id)
            if not self.req.command:
                raise ContainerError("command is empty", step="exec")
        except ContainerError as exc:
            self._reply(Failure(step=exc.step, detail=exc.detail))
            return
        self._reply(Streaming(kind="exec"))
        code = self._run(container)
        with contextlib.suppress(OSError):
            self.writer.send_message(streams.STATUS, Exited(exit_code=code))

    def _reply(self, message: Failure | Streaming) -> None:
        from vmsandbox.guest.protocol import send_frame

        send_frame(self.conn, message)

    def _run(self, container: Container) -> int:
        assert container.runtime is not None
        pid_file = os.path.join(container.workdir, f"exec-{next(_serial)}.pid")
        cmd = [*container.runtime.base(), "exec", "--detach", "--pid-file", os.path.abspath(pid_file)]
        console: _ConsoleReceiver | None = None
        pumps: list[_Pump] = []
        err_r: int | None = None
        try:
            if self.req.tty:
                console = _ConsoleReceiver()
                cmd += ["--tty", "--console-socket", console.path, container.id, *self.req.command]
                err_r, err_w = os.pipe()
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_w
                )
                os.close(err_w)
                console.receive(proc)
            else:
                in_r, in_w = os.pipe() if self.req.stdin else (subprocess.DEVNULL, None)
                out_r, out_w = os.pipe()
                err_r2, err_w2 = os.pipe()
                proc = subprocess.Popen(
                    [*cmd, container.id, *self.req.command], stdin=in_r, stdout=out_w, stderr=err_w2
                )
                for fd in (in_r, out_w, err_w2):
                    if fd != subprocess.DEVNULL:
                        os.close(fd)
                self.stdin_fd = in_w
                pumps = [
                    _Pump(out_r, streams.STDOUT, self.writer),
                    _Pump(err_r2, streams.STDERR, self.writer),
                ]
            runtime_status = proc.wait()
            if console is not None and console.master is not None:
                self.pty_master = console.master
                self.stdin_fd = console.master
                if self.req.rows and self.req.cols:
                    with contextlib.suppress(OSError):
                        set_window(console.master, self.req.rows, self.req.cols)
                pumps = [_Pump(os.dup(console.master), streams.STDOUT, self.writer)]
            if runtime_status != 0:
                self._runtime_failed(container, err_r, runtime_status)
                _drain(pumps)
                return CANNOT_RUN
            self.pid = read_pid(pid_file)
            threading.Thread(target=self._input, daemon=True, name="exec-in").start()
            code = _wait(self.pid)
            _drain(pumps)
            return code
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pid_file)
            if console is not None:
                console.close()
            self._close_stdin()
            if self.pty_master is not None:
                _close_quietly(self.pty_master)
            if err_r is not None:
                _close_quietly(err_r)

    def _runtime_failed(self, container: Container, err_r: int | None, status: int) -> None:
        """Say why the runtime could not start the process (on stderr, as a shell would)."""
        if err_r is None:
            return  # the runtime wrote to the process's own stderr pipe, already relayed
        os.set_blocking(err_r, False)
        try:
            message = os.read(err_r, 65536)
        except BlockingIOError:
            message = b""
        name = container.runtime.name if container.runtime else "runtime"
        with contextlib.suppress(OSError):
            self.writer.send(streams.STDERR, message or f"{name} exec: exit status {status}\n".encode())

    def _input(self) -> None:
        """Host chunks: stdin bytes, stdin close, resize and signals, until the host hangs up."""
        try:
            while True:
                chunk = streams.recv_chunk(self.conn)
                if chunk is None:
                    break
                channel, payload = chunk
                if channel == streams.STDIN:
                    fd = self.stdin_fd
                    if fd is not None:
                        _write_all(fd, payload)
                elif channel == streams.CLOSE and payload[:1] == bytes([streams.STDIN]):
                    if self.pty_master is None:
                        self._close_stdin()
                elif channel == streams.RESIZE:
                    rows, cols = streams.parse_resize(payload)
                    if self.pty_master is not None:
                        set_window(self.pty_master, rows, cols)
                elif channel == streams.SIGNAL:
                    self._signal(streams.parse_signal(payload))
        except (OSError, ProtocolError) as exc:
            log.debug("exec input ended: %s", exc)
        # The host is gone: the process sees the end of its input, or, on a terminal, a hangup
        # (as when a terminal window closes), so an abandoned interactive shell does not linger.
        if self.pty_master is None:
            self._close_stdin()
        else:
            self._signal(signal.SIGHUP)

    def _signal(self, signum: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _close_stdin(self) -> None:
        with self._stdin_lock:
            fd, self.stdin_fd = self.stdin_fd, None
        if fd is not None and fd != self.pty_master:
            _close_quietly(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _wait(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
        return exit_code_of(status)
    except ChildProcessError:
        # Not re-parented to us (the agent could not become a subreaper): the status is lost.
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return 255
            time.sleep(0.02)


def _drain(pumps: list[_Pump]) -> None:
    """Wait until every output stream ended, or sits idle because a leftover child holds it.

    Called once the process has exited: what it wrote last is still in the pipe, so a stream
    counts as idle only when nothing came for a while after the exit.
    """
    exited_at = time.monotonic()
    while True:
        alive = [p for p in pumps if p.thread.is_alive()]
        if not alive or all(p.idle_since(exited_at) for p in alive):
            return
        for pump in alive:
            pump.thread.join(0.05)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
