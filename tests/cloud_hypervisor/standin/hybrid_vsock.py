"""The host end of the stand-in's hybrid vsock device.

Real Cloud Hypervisor binds the VM's vsock unix socket at ``vm.boot``; a host client writes
``CONNECT <port>\\n`` (at most 32 bytes, keyword case-insensitive, read byte by byte so no
payload is swallowed), and when the guest accepts on that port the VMM answers
``OK <local port>\\n`` with a host-side port counted from 2^30, then pipes bytes both ways.
When nothing listens in the guest it closes the connection without a reply. The socket file is
never removed by the VMM. Here "the guest accepting" is a stream from :mod:`standin.guest`.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

MAX_COMMAND = 32
_LOCAL_PORT_BASE = 1 << 30


class HybridVsock:
    def __init__(self, path: Path, open_stream: Callable[[int], socket.socket | None]) -> None:
        self.path = path
        self._open_stream = open_stream
        self._listener: socket.socket | None = None
        self._resumed = threading.Event()
        self._resumed.set()
        self._lock = threading.Lock()
        self._last_port = _LOCAL_PORT_BASE
        self._streams: set[socket.socket] = set()

    def bind(self) -> None:
        """Bind and listen; raises OSError (e.g. EADDRINUSE when the file exists)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="vsock-accept", daemon=True).start()

    def close(self) -> None:
        """Stop listening and drop every connection; the socket file stays, as with the real VMM."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            streams, self._streams = self._streams, set()
        for stream in streams:
            with contextlib.suppress(OSError):
                stream.shutdown(socket.SHUT_RDWR)
            stream.close()
        self._resumed.set()

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def _accept_loop(self) -> None:
        listener = self._listener
        while listener is not None and self._listener is listener:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="vsock-conn", daemon=True).start()

    def _next_port(self) -> int:
        with self._lock:
            self._last_port = ((self._last_port + 1) & ~(1 << 31)) | (1 << 30)
            return self._last_port

    def _serve(self, conn: socket.socket) -> None:
        guest: socket.socket | None = None
        try:
            port = self._read_command(conn)
            if port is None:
                return
            self._resumed.wait()  # a paused VM's vsock device does not progress
            if self._listener is None:
                return
            guest = self._open_stream(port)
            if guest is None:  # the guest answered RST: close without a reply
                return
            conn.sendall(f"OK {self._next_port()}\n".encode())
            with self._lock:
                self._streams.update((conn, guest))
            pump = threading.Thread(target=_pump, args=(guest, conn), daemon=True)
            pump.start()
            _pump(conn, guest)
            pump.join()
        except OSError as exc:
            print(f"cloud-hypervisor stand-in: vsock connection error: {exc}", file=sys.stderr, flush=True)
        finally:
            with self._lock:
                self._streams.discard(conn)
                if guest is not None:
                    self._streams.discard(guest)
            conn.close()
            if guest is not None:
                guest.close()

    @staticmethod
    def _read_command(conn: socket.socket) -> int | None:
        command = bytearray()
        while len(command) < MAX_COMMAND:
            byte = conn.recv(1)
            if not byte:
                return None
            command += byte
            if byte == b"\n":
                break
        else:
            return None  # longer than 32 bytes without a newline: rejected
        keyword, _, number = command.decode("ascii", "replace").strip().partition(" ")
        if keyword.lower() != "connect":
            return None
        try:
            return int(number.strip())
        except ValueError:
            return None


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until EOF, then half-close the other side (v53 semantics)."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
