"""Binary stream chunks: what an exec or file transfer connection carries after its JSON handshake.

Output and file data would cost a third more as base64 inside JSON frames, so once the agent has
answered an :class:`~vmsandbox.guest.protocol.Exec`, ``ReadPath`` or ``WritePath`` request, both
ends switch to chunks: a 4-byte big-endian payload length, one channel byte, then the payload.
The channel numbers are Kubernetes' remote-command channels, so the node agent relays chunks to
a WebSocket without translating them; :data:`SIGNAL` is this protocol's own.

Flow control is the stream's own: a writer blocks in ``sendall`` while the reader is behind (the
virtio-serial multiplexer grants credit per channel the same way), and each end reads only as
fast as it can deliver, so neither side buffers more than one chunk per stream.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import json
import os
import select
import struct
import threading

from vmsandbox.guest.wire import ProtocolError

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

    from vmsandbox.guest.wire import Message

STDIN = 0
STDOUT = 1
STDERR = 2
#: The end of the stream: a JSON reply message (exit status, Ok or Failure).
STATUS = 3
#: Terminal size as JSON ``{"Width": cols, "Height": rows}``, Kubernetes' resize message.
RESIZE = 4
#: A signal number (ASCII decimal) for the exec'd process.
SIGNAL = 5
#: Half-close: the payload's first byte names the channel that ends (stdin, for the host).
CLOSE = 255

#: Payload bytes per chunk of exec output (small: a terminal wants each piece at once) and of
#: file data (large: fewer round trips through the framing); a reader accepts up to MAX_CHUNK.
CHUNK = 64 * 1024
FILE_CHUNK = 1024 * 1024
MAX_CHUNK = 1024 * 1024
_HEADER = struct.Struct(">IB")
#: fcntl's F_SETPIPE_SZ (Linux), which the fcntl module names only from Python 3.10.
F_SETPIPE_SZ = 1031


def _sendfile(out_fd: int, file: BinaryIO, offset: int, size: int) -> int:
    """``size`` bytes of ``file`` from ``offset`` to the blocking socket ``out_fd``, fewer at the
    file's end; the file's position ends after them (``socket.sendfile`` does the same, but the
    C socket type the agent hands out has no such method)."""
    sent = 0
    while sent < size:
        n = os.sendfile(out_fd, file.fileno(), offset + sent, size - sent)
        if n == 0:
            break
        sent += n
    file.seek(offset + sent)
    return sent


class ChunkWriter:
    """Sends chunks on one socket from several threads (stdout and stderr pumps) without interleaving."""

    def __init__(self, sock: _socket.socket, chunk: int = CHUNK) -> None:
        self.sock = sock
        self.chunk = chunk
        self._lock = threading.Lock()

    def send(self, channel: int, payload: bytes = b"") -> None:
        if len(payload) <= self.chunk:
            with self._lock:
                self.sock.sendall(_HEADER.pack(len(payload), channel))
                self.sock.sendall(payload)
            return
        view = memoryview(payload)
        for start in range(0, len(payload), self.chunk):
            piece = view[start : start + self.chunk]
            with self._lock:
                self.sock.sendall(_HEADER.pack(len(piece), channel))
                self.sock.sendall(piece)

    def send_file(self, channel: int, file: BinaryIO, count: int) -> int:
        """One chunk of up to ``count`` bytes from ``file``'s position, by ``sendfile`` (no copy
        through this process); 0 at the end of the file.

        The chunk's length is announced before its bytes, so a file that shrinks meanwhile cannot
        be sent short: the connection is shut down instead, which the reader sees as a broken
        stream rather than a silently truncated file.
        """
        offset = file.tell()
        size = min(count, os.fstat(file.fileno()).st_size - offset)
        if size <= 0:
            data = file.read(count)  # not a plain file, or it grew: the size comes from the read
            if data:
                self.send(channel, data)
            return len(data)
        with self._lock:
            self.sock.sendall(_HEADER.pack(size, channel))
            sent = _sendfile(self.sock.fileno(), file, offset, size)
            if sent != size:
                self.sock.shutdown(_socket.SHUT_RDWR)
                raise ProtocolError(f"the file shrank while it was sent ({sent} of {size} bytes)")
        return sent

    def send_message(self, channel: int, message: Message) -> None:
        self.send(channel, message.to_json().encode())


class Splicer:
    """Moves a chunk's payload from a blocking socket to a file through a pipe with ``splice``:
    the bytes never enter this process, which makes a file upload about half again as fast.

    :meth:`move` answers False when splicing is not possible here (no ``os.splice``, a socket
    with a timeout, or a kernel or transport that refuses it before moving a byte); the caller
    then receives the payload itself.
    """

    def __init__(self, sock: _socket.socket, out_timeout: float | None = None) -> None:
        self.sock = sock
        self.out_timeout = out_timeout
        self.pipe: tuple[int, int] | None = None
        self.usable = hasattr(os, "splice") and sock.gettimeout() is None

    def __enter__(self) -> Splicer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pipe is not None:
            for end in self.pipe:
                os.close(end)
            self.pipe = None

    def move(self, fd: int, length: int) -> bool:
        if not self.usable or not length:
            return False
        if self.pipe is None:
            self.pipe = os.pipe2(os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # a smaller pipe only means more calls
                fcntl.fcntl(self.pipe[1], F_SETPIPE_SZ, MAX_CHUNK)
        rd, wr = self.pipe
        left = length
        while left:
            try:
                got = os.splice(self.sock.fileno(), wr, left)
            except OSError:
                if left == length:
                    self.usable = False
                    return False
                raise
            if not got:
                raise ProtocolError(f"connection closed inside a chunk ({length - left} of {length} bytes)")
            left -= got
            _drain_pipe(rd, fd, got, self.out_timeout)
        return True


def _drain_pipe(rd: int, fd: int, count: int, timeout: float | None) -> None:
    """Splice ``count`` bytes from the pipe ``rd`` to ``fd``; a non-blocking ``fd`` (a socket with a
    timeout) is waited for up to ``timeout`` seconds at a time."""
    while count:
        try:
            count -= os.splice(rd, fd, count)
        except BlockingIOError:
            _, ready, _ = select.select([], [fd], [], timeout)
            if not ready:
                raise TimeoutError("the receiver took no data in time") from None


def recv_exact_into(sock: _socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False at a clean end of stream before the first byte."""
    n = len(view)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:])
        if not count:
            if got:
                raise ProtocolError(f"connection closed inside a chunk ({got} of {n} bytes)")
            return False
        got += count
    return True


def _recv_exact(sock: _socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes, received in place; None at a clean end of stream before the first."""
    buf = bytearray(n)
    return bytes(buf) if recv_exact_into(sock, memoryview(buf)) else None


def recv_header(sock: _socket.socket) -> tuple[int, int] | None:
    """The next chunk's ``(length, channel)``, its payload left on the socket; None at a clean end."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    length, channel = _HEADER.unpack(header)
    if length > MAX_CHUNK:
        raise ProtocolError(f"peer announced a {length}-byte chunk; the limit is {MAX_CHUNK}")
    return length, channel


def recv_chunk(sock: _socket.socket) -> tuple[int, bytes] | None:
    """The next ``(channel, payload)``, or None when the peer closed the connection cleanly."""
    header = recv_header(sock)
    if header is None:
        return None
    length, channel = header
    payload = _recv_exact(sock, length) if length else b""
    if payload is None:
        raise ProtocolError("connection closed after a chunk header")
    return channel, payload


def parse_resize(payload: bytes) -> tuple[int, int]:
    """``(rows, cols)`` from a resize chunk; raises :class:`ProtocolError` on anything else."""
    try:
        size = json.loads(payload)
        cols, rows = size["Width"], size["Height"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"bad resize chunk {payload[:80]!r}") from exc
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535 for v in (rows, cols)):
        raise ProtocolError(f"bad terminal size {payload[:80]!r}")
    return rows, cols


def parse_signal(payload: bytes) -> int:
    try:
        signum = int(payload.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"bad signal chunk {payload[:20]!r}") from exc
    if not 1 <= signum <= 64:
        raise ProtocolError(f"signal {signum} is out of range 1-64")
    return signum
