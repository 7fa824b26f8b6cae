"""Host end of the agent's virtio-serial line: one long-lived proxy process per VM.

QEMU exposes the guest's ``io.vmsandbox.agent`` port as a unix socket chardev that accepts a
single client. This proxy is that client. Once the guest agent shows it is listening (``HELLO``
or ``PONG``), it binds ``--listen`` (created under a temporary name and renamed, so the socket's
existence means "agent ready") and carries every accepted connection as one channel of
:mod:`vmsandbox.guest.mux`. It exits, removing its socket, when QEMU closes the line or on
SIGTERM/SIGINT.

    python3 -m vmsandbox.hypervisor.qemu.mux --line <state>/agent-serial.sock --listen <state>/agent.sock
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from vmsandbox.guest.mux import CONTROL_CHANNEL, PING, Line, MuxSession

log = logging.getLogger("vmsandbox.hypervisor.qemu.mux")

#: How often the proxy pings the guest until the agent answers.
PING_INTERVAL = 0.5


class MuxProxy:
    """Bridges a unix listening socket to channels over the line socket."""

    def __init__(self, line_sock: socket.socket, listen_path: Path) -> None:
        self.line_sock = line_sock
        self.listen_path = listen_path
        self.session = MuxSession(Line(line_sock.fileno()), on_ready=self._on_ready)
        self.server: socket.socket | None = None
        self._bound = threading.Event()
        self._stop = threading.Event()

    def _on_ready(self) -> None:
        if self._bound.is_set():
            return
        self._bound.set()
        tmp = self.listen_path.with_name(self.listen_path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(tmp))
        server.listen(64)
        os.replace(tmp, self.listen_path)
        self.server = server
        threading.Thread(target=self._accept_loop, args=(server,), name="mux-accept", daemon=True).start()
        log.info("guest agent ready; listening on %s", self.listen_path)

    def _accept_loop(self, server: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                self.session.open_channel(conn)
            except OSError:
                conn.close()
                return

    def _ping_loop(self) -> None:
        while not self._stop.is_set() and not self.session.ready.is_set():
            self.session.send(PING, CONTROL_CHANNEL)
            self._stop.wait(PING_INTERVAL)

    def run(self) -> None:
        """Pump the line until QEMU closes it (or :meth:`stop`)."""
        threading.Thread(target=self._ping_loop, name="mux-ping", daemon=True).start()
        line = self.session.line
        try:
            while not self._stop.is_set():
                data = line.read()
                if not data:
                    if not self._stop.is_set():
                        log.info("line closed by QEMU; exiting")
                    return
                self.session.feed(data)
        finally:
            self.stop()
            line.close(close_fd=False)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self.server is not None:
            with contextlib.suppress(FileNotFoundError):
                self.listen_path.unlink()
            # shutdown() wakes a thread blocked in accept(); close() alone does not.
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_RDWR)
            self.server.close()
        self.session.close()
        self.session.line.interrupt()


def connect_line(path: Path, timeout: float) -> socket.socket:
    """Connect to QEMU's chardev socket, which appears shortly after QEMU starts."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise SystemExit(f"agent serial mux: cannot connect to {path}: {exc.strerror}") from exc
            time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m vmsandbox.hypervisor.qemu.mux", description=__doc__)
    parser.add_argument("--line", type=Path, required=True, help="QEMU's agent chardev unix socket")
    parser.add_argument("--listen", type=Path, required=True, help="unix socket to serve connections on")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mux: %(message)s", stream=sys.stderr)

    proxy = MuxProxy(connect_line(args.line, args.connect_timeout), args.listen)

    def _terminate(signum: int, frame: FrameType | None) -> None:
        proxy.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    proxy.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
