"""The relay process (see :mod:`vmsandbox.runtime.relay`): ``python -m vmsandbox.runtime.relay_main``.

Started early, before its container exists, with a socket (``--config-fd``) on which its
creator later sends its configuration as JSON, with the caller's stdio and a connection to the
guest agent attached, and a pipe to report readiness on (``--ready-fd``).
It imports only what attaching needs; a driver (the heavy part) is built on the first signal
to forward. It never logs through :mod:`logging`: only sockets, pipes and plain file writes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import sys
import termios
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from vmsandbox.runtime.rotation import RotatingLog, rotate_foreign

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
#: In the container's state directory: its exit code, written by the relay when it ends.
EXIT_FILE = "exit_code"
#: In the container's state directory: what the relay has to say about itself.
RELAY_LOG = "relay.log"
CLONE_NEWCGROUP = 0x02000000
#: Descriptors that come with the configuration: the guest agent's connection and the stdio.
CONFIG_FDS = 4


class RelayError(Exception):
    """The creator's hand-over was malformed (a bug, not a condition of the container)."""


@dataclass(frozen=True)
class ChildConfig:
    container_id: str
    terminal: bool
    log_path: Path
    relay_log: Path
    max_bytes: int
    max_files: int
    serial_log: Path | None
    #: Where the container's exit code is written when it ends (None: nowhere).
    exit_path: Path | None
    #: The ``cgroup.procs`` files of the VM's cgroup (one per hierarchy), which the relay joins.
    cgroup_procs: list[Path]
    #: The host's cgroup namespace to enter first, when the creator runs in another one.
    cgroup_namespace: Path | None
    #: The VM's handle and the drivers' settings, as JSON: read only to forward a signal.
    handle: dict[str, Any]
    hypervisor_config: dict[str, Any]

    @classmethod
    def parse(cls, raw: str) -> ChildConfig:
        doc = json.loads(raw)
        serial = doc.get("serial_log")
        return cls(
            container_id=str(doc["container_id"]),
            terminal=bool(doc["terminal"]),
            log_path=Path(doc["log_path"]),
            relay_log=Path(doc["relay_log"]),
            max_bytes=int(doc["max_bytes"]),
            max_files=int(doc["max_files"]),
            serial_log=Path(serial) if serial else None,
            exit_path=Path(doc["exit_path"]) if doc.get("exit_path") else None,
            cgroup_procs=[Path(p) for p in doc.get("cgroup_procs") or []],
            cgroup_namespace=Path(doc["cgroup_namespace"]) if doc.get("cgroup_namespace") else None,
            handle=dict(doc["handle"]),
            hypervisor_config=dict(doc["hypervisor_config"]),
        )


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - runs in the relay
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.runtime.relay_main")
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--config-fd", type=int, required=True)
    args = parser.parse_args(argv)
    received = receive_config(args.config_fd)
    if received is None:
        os._exit(0)  # abandoned: the container will not exist
    config, agent = received
    code = LOST_AGENT_STATUS
    try:
        _leave_creator(config)
        os.write(args.ready_fd, b"P%d\n" % os.getpid())
        code = _child(config, args.ready_fd, agent)
    except BaseException:
        _log(config.relay_log, traceback.format_exc())
    finally:
        os._exit(code)


def receive_config(fd: int) -> tuple[ChildConfig, socket.socket] | None:
    """The configuration from the creator's socket, up to its end; the descriptors that came
    with it (the guest agent's connection, then the caller's stdin, stdout and stderr) are the
    connection returned and this process's 0, 1 and 2. None: the creator sent nothing."""
    with socket.socket(fileno=fd) as sock:
        body, fds, _, _ = socket.recv_fds(sock, 65536, CONFIG_FDS)
        if not body:
            for extra in fds:
                os.close(extra)
            return None
        chunks = [body]
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    if len(fds) != CONFIG_FDS:
        raise RelayError(f"the creator sent {len(fds)} of the {CONFIG_FDS} descriptors")
    agent, *stdio = fds
    for target, received in enumerate(stdio):
        os.dup2(received, target)
        os.close(received)
    return ChildConfig.parse(b"".join(chunks).decode()), socket.socket(fileno=agent)


def _leave_creator(config: ChildConfig) -> None:
    """Join the VM's cgroup and fork the relay off (this launcher then exits), so the relay is
    no child of its creator and outlives the creator's cgroup. Safe here: this interpreter is
    fresh and has one thread. The launcher was started in a session of its own already."""
    if config.cgroup_namespace is not None:
        _enter_cgroup_namespace(config.cgroup_namespace)
    for procs in config.cgroup_procs:
        procs.write_text(str(os.getpid()))
    if os.fork() != 0:
        os._exit(0)


def _enter_cgroup_namespace(path: Path) -> None:
    """setns(2) into the cgroup namespace at ``path`` (the drivers' cgroup module does the same
    for VMMs; it cannot be imported here, without site-packages)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWCGROUP) != 0:
            raise OSError(ctypes.get_errno(), f"cannot enter the cgroup namespace {path}")
    finally:
        os.close(fd)


def _write_exit(path: Path, code: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(f"{code}\n")
        tmp.replace(path)
    except OSError as exc:
        _log(path.with_name(RELAY_LOG), f"writing the exit code to {path}: {exc}")


def read_exit(path: Path) -> int | None:
    """The exit code a relay wrote, None when it wrote none."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _log(path: Path, text: str) -> None:
    try:
        with path.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text.rstrip()}\n")
    except OSError:
        pass


def _child(config: ChildConfig, ready_w: int, sock: socket.socket) -> int:
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
    return Relay(config, wakeup_r).run(ready_w, sock)


class Relay:
    def __init__(self, config: ChildConfig, wakeup_r: int) -> None:
        self.config = config
        self.wakeup_r = wakeup_r
        self.log = RotatingLog(config.log_path, config)
        self.stdin_open = True
        self.serial_log = config.serial_log
        self.serial_checked = time.monotonic()
        self._connect: Any = None

    def _agent(self) -> socket.socket:
        """A new connection to the guest agent (for a signal): the driver is loaded on first use."""
        if self._connect is None:
            import site

            site.main()  # started with -S: the drivers need site-packages (pydantic)
            from vmsandbox.hypervisor import driver_for
            from vmsandbox.hypervisor.base import VMHandle
            from vmsandbox.hypervisor.config import HypervisorConfig

            handle = VMHandle.model_validate(self.config.handle)
            driver = driver_for(
                handle.hypervisor, HypervisorConfig.model_validate(self.config.hypervisor_config)
            )
            self._connect = lambda: driver.connect(handle)
        conn: socket.socket = self._connect()
        return conn

    def run(self, ready_w: int, sock: socket.socket) -> int:
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
            code = frame.exit_code & 0xFF
            if self.config.exit_path is not None:
                _write_exit(self.config.exit_path, code)
            return code
        _log(self.config.relay_log, f"unexpected frame {frame.type}")
        return None

    def _bound_serial_log(self) -> None:
        """The VMM writes the serial log; the relay, alive as long as the container, bounds it."""
        if self.serial_log is None or time.monotonic() - self.serial_checked < SERIAL_CHECK_SECONDS:
            return
        self.serial_checked = time.monotonic()
        try:
            rotate_foreign(self.serial_log, self.config)
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
                with self._agent() as conn:
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


if __name__ == "__main__":  # pragma: no cover - runs as the relay
    main()
