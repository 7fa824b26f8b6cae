"""The host-side relay: the process whose pid callers see as the container's.

A runc-style caller (containerd's shim, a shell) waits on the pid from ``--pid-file`` and reads
the stdio it gave ``create``. The container runs in a guest where host pids mean nothing, so one
relay per container stands in for it (kata-shim's model): it attaches to the guest agent, copies
output to its own stdout/stderr and to the container log, copies its stdin in, forwards the
signals it receives, and exits with the container's status (128 + signal when one killed it).

The relay is a fresh interpreter (``python -m vmsandbox.runtime.relay_main``), never a fork of its
creator: the creator may be the multi-threaded agent, and a forked child could inherit a lock
some other thread held at that instant. It reads its configuration from a pipe, reports through
another that it is attached, then never logs through :mod:`logging`: only sockets, pipes and
plain file writes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import traceback
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsandbox.guest.protocol import (
    REPLY,
    Attach,
    Attached,
    Exited,
    Output,
    ProtocolError,
    Resize,
    SignalContainer,
    StdinClose,
    StdinData,
    decode,
    recv_frame_bytes,
    recv_reply,
    send_frame,
)
from vmsandbox.hypervisor import driver_for
from vmsandbox.hypervisor.base import SERIAL_LOG_ENDPOINT, HypervisorDriver, VMHandle
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.runtime.errors import AgentError
from vmsandbox.runtime.logfiles import LogLimits, RotatingLog, rotate_foreign

#: Signals a caller may send the relay's pid; each is passed on to the container.
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)
READY = b"R"
#: How often the relay looks at the size of the VM's serial log.
SERIAL_CHECK_SECONDS = 2.0
LOST_AGENT_STATUS = 255


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


def spawn_relay(config: RelayConfig, timeout: float = 15.0) -> int:
    """Start the relay (exec'd, in a session of its own); return its pid once it is attached."""
    ready_r, ready_w = os.pipe()
    config_r, config_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmsandbox.runtime.relay_main",
                f"--ready-fd={ready_w}",
                f"--config-fd={config_r}",
            ],
            stdin=config.stdio[0],
            stdout=config.stdio[1],
            stderr=config.stdio[2],
            pass_fds=(ready_w, config_r),
            start_new_session=True,
        )
    finally:
        os.close(ready_w)
        os.close(config_r)
    with os.fdopen(config_w, "w") as pipe:
        pipe.write(config.model_dump_json())
    try:
        sel = selectors.DefaultSelector()
        sel.register(ready_r, selectors.EVENT_READ)
        ok = bool(sel.select(timeout)) and os.read(ready_r, 1) == READY
        sel.close()
    finally:
        os.close(ready_r)
    if not ok:
        proc.kill()  # not yet reaped, so the pid is still this relay's
        proc.wait()
        detail = _tail(config.relay_log) or "no diagnostics"
        raise AgentError(f"the relay did not attach to the container: {detail}", step="relay")
    return proc.pid


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-600:].strip()
    except OSError:
        return ""


def _log(path: Path, text: str) -> None:
    try:
        with path.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text.rstrip()}\n")
    except OSError:
        pass


# ---- the child ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - runs in the relay
    """The relay process: stdio is the caller's; the configuration arrives on ``--config-fd``."""
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.runtime.relay_main")
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--config-fd", type=int, required=True)
    args = parser.parse_args(argv)
    with os.fdopen(args.config_fd) as pipe:
        config = RelayConfig.model_validate_json(pipe.read())
    code = LOST_AGENT_STATUS
    try:
        code = _child(config, args.ready_fd)
    except BaseException:
        _log(config.relay_log, traceback.format_exc())
    finally:
        os._exit(code)


def _child(config: RelayConfig, ready_w: int) -> int:
    if config.terminal and os.isatty(0):
        with contextlib.suppress(OSError):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - never print into the caller's stdio
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
    for signum in (*FORWARDED, signal.SIGWINCH):
        signal.signal(signum, lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # A driver of its own: the creator's may track child processes that are not the relay's.
    driver = driver_for(config.handle.hypervisor, config.hypervisor_config)
    return Relay(driver, config, wakeup_r).run(ready_w)


class Relay:
    def __init__(self, driver: HypervisorDriver, config: RelayConfig, wakeup_r: int) -> None:
        self.driver = driver
        self.config = config
        self.wakeup_r = wakeup_r
        self.log = RotatingLog(config.log_path, config.log_limits)
        self.stdin_open = True
        serial = config.handle.endpoints.get(SERIAL_LOG_ENDPOINT)
        self.serial_log = Path(serial) if serial else None
        self.serial_checked = time.monotonic()

    def run(self, ready_w: int) -> int:
        sock = self.driver.connect(self.config.handle)
        send_frame(sock, Attach(container_id=self.config.container_id))
        reply = recv_reply(sock)
        if not isinstance(reply, Attached):
            _log(self.config.relay_log, f"attach refused: {reply}")
            return LOST_AGENT_STATUS
        os.write(ready_w, READY)
        os.close(ready_w)
        if self.config.terminal:
            self._send_size(sock)
        # poll, not epoll: the caller's stdin may be /dev/null or a regular file.
        sel = selectors.PollSelector()
        sel.register(sock, selectors.EVENT_READ, "agent")
        sel.register(self.wakeup_r, selectors.EVENT_READ, "signal")
        sel.register(0, selectors.EVENT_READ, "stdin")
        while True:
            self._bound_serial_log()
            for key, _ in sel.select(SERIAL_CHECK_SECONDS):
                if key.data == "agent":
                    code = self._from_agent(sock)
                    if code is not None:
                        return code
                elif key.data == "signal":
                    self._signals(sock)
                elif not self._stdin(sock):
                    sel.unregister(0)

    def _from_agent(self, sock: socket.socket) -> int | None:
        try:
            body = recv_frame_bytes(sock)
        except (OSError, ProtocolError) as exc:
            _log(self.config.relay_log, f"lost the guest agent: {exc}")
            return LOST_AGENT_STATUS
        if body is None:
            _log(self.config.relay_log, "the guest agent closed the stream before the container exited")
            return LOST_AGENT_STATUS
        frame = decode(REPLY, body)
        if isinstance(frame, Output):
            data = frame.raw()
            self.log.write(data)
            _write_all(2 if frame.stream == "stderr" else 1, data)
            return None
        if isinstance(frame, Exited):
            return frame.exit_code & 0xFF
        _log(self.config.relay_log, f"unexpected frame {frame.type}")
        return None

    def _bound_serial_log(self) -> None:
        """The VMM writes the serial log; the relay, alive as long as the container, bounds it."""
        if self.serial_log is None or time.monotonic() - self.serial_checked < SERIAL_CHECK_SECONDS:
            return
        self.serial_checked = time.monotonic()
        try:
            rotate_foreign(self.serial_log, self.config.log_limits)
        except OSError as exc:
            _log(self.config.relay_log, f"rotating {self.serial_log}: {exc}")

    def _stdin(self, sock: socket.socket) -> bool:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if data:
            send_frame(sock, StdinData.of(data))
            return True
        if not self.config.terminal:
            send_frame(sock, StdinClose())
        return False

    def _signals(self, sock: socket.socket) -> None:
        try:
            received = os.read(self.wakeup_r, 512)
        except BlockingIOError:
            return
        for signum in received:
            if signum == signal.SIGWINCH:
                if self.config.terminal:
                    self._send_size(sock)
                continue
            try:
                with self.driver.connect(self.config.handle) as conn:
                    send_frame(conn, SignalContainer(container_id=self.config.container_id, signal=signum))
                    recv_reply(conn)
            except Exception as exc:
                _log(self.config.relay_log, f"forwarding signal {signum}: {exc}")

    def _send_size(self, sock: socket.socket) -> None:
        try:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            return
        send_frame(sock, Resize(rows=rows, cols=cols))


def _write_all(fd: int, data: bytes) -> None:
    """Write to the caller's stream; a caller that closed it only loses its copy, not the log."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError:
            return
        view = view[n:]
