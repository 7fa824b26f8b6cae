"""Many byte streams over one serial line: the guest end of the agent's virtio-serial port.

A virtio-serial port is a single byte stream, but the host opens several concurrent connections
to the guest agent (one per waiting container relay plus CLI calls). Both ends of the line run a
:class:`MuxSession` that carries numbered channels in small frames, in the spirit of yamux:

    header = channel (u32, big-endian) | kind (u8) | payload length (u32)

Only the host opens channels (``OPEN``); either side sends ``DATA``, half-closes with ``EOF`` and
aborts with ``CLOSE``. Each direction of a channel has a credit window (``CREDIT`` grants more
after the receiver has delivered bytes to its local socket), so one slow reader never stalls the
line for the others and memory per channel stays bounded. ``HELLO`` (guest, on open) and
``PING``/``PONG`` tell the host that the guest agent is listening.

This module is stdlib-only: it runs inside the guest, where the agent imports it.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os
import queue
import select
import struct
import threading
import time
import tty
from collections.abc import Callable

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.logs import log
from vmsandbox.guest.transport import Listener

HEADER = struct.Struct(">IBI")
MAX_PAYLOAD = 32 * 1024
#: Bytes a sender may have in flight per channel before the receiver grants more.
WINDOW = 256 * 1024
CONTROL_CHANNEL = 0

HELLO, PING, PONG, OPEN, DATA, EOF, CLOSE, CREDIT = range(8)
KIND_NAMES = ("HELLO", "PING", "PONG", "OPEN", "DATA", "EOF", "CLOSE", "CREDIT")
CREDIT_PAYLOAD = struct.Struct(">I")

#: Virtio ports appear here when udev names them; without udev we look them up in sysfs.
VIRTIO_PORTS_DIR = "/dev/virtio-ports"
VIRTIO_PORTS_SYSFS = "/sys/class/virtio-ports"


class MuxError(VMSandboxError, OSError):
    """The multiplexed serial line failed or was closed (an ``OSError`` so accept loops end)."""

    step = "agent serial mux"


class MuxClosed(MuxError):
    """The listener or session was closed."""


def encode_frame(kind: int, channel: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise MuxError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(channel, kind, len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into ``(kind, channel, payload)`` frames; rejects garbage."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            channel, kind, length = HEADER.unpack_from(self._buf)
            if kind >= len(KIND_NAMES) or length > MAX_PAYLOAD:
                self._buf.clear()
                raise MuxError(f"corrupt frame header (kind {kind}, length {length}); line out of sync")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append((kind, channel, bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return frames

    def reset(self) -> None:
        self._buf.clear()


class Line:
    """The raw serial line: a file descriptor read and written whole frames at a time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # Closing a descriptor does not wake a thread blocked reading it; this pipe does.
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self.closed = False

    def read(self) -> bytes:
        """Some bytes, or b"" when the other end is not connected or the line was closed."""
        try:
            wake = self._wake_r
            if self.closed or wake < 0:
                return b""
            ready, _, _ = select.select([self.fd, wake], [], [])
            if self.closed or wake in ready:
                return b""
            return os.read(self.fd, 65536)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                return b""
            raise

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def interrupt(self) -> None:
        """Make a blocked (and every later) :meth:`read` return b""."""
        with self._lock:
            self.closed = True
            if self._wake_w >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")

    def close(self, *, close_fd: bool = True) -> None:
        """Release the wake pipe (and the line's descriptor unless the caller owns it)."""
        self.interrupt()
        with self._lock:
            fds = [self._wake_r, self._wake_w] + ([self.fd] if close_fd else [])
            self._wake_r = self._wake_w = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class _Channel:
    """One virtual connection: a local stream socket pumped to and from the line."""

    def __init__(self, session: MuxSession, channel_id: int, local: _socket.socket) -> None:
        self.session = session
        self.id = channel_id
        self.local = local
        self.inbound: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.credit = WINDOW
        self.closed = False
        self.sent_eof = False
        self.got_eof = False
        self._threads_left = 2

    def start(self) -> None:
        for target, role in ((self._pump_out, "out"), (self._pump_in, "in")):
            threading.Thread(target=target, name=f"mux-{self.id}-{role}", daemon=True).start()

    def grant(self, amount: int) -> None:
        with self.cond:
            self.credit += amount
            self.cond.notify_all()

    def _pump_out(self) -> None:
        """Local socket -> line, within the credit the peer granted."""
        try:
            while True:
                with self.cond:
                    while self.credit <= 0 and not self.closed:
                        self.cond.wait()
                    if self.closed:
                        return
                    budget = min(self.credit, MAX_PAYLOAD)
                try:
                    data = self.local.recv(budget)
                except OSError:
                    self.abort(notify_peer=True)
                    return
                if self.closed:
                    return
                if not data:
                    self.session.send(EOF, self.id)
                    self._finished(sent_eof=True)
                    return
                with self.cond:
                    self.credit -= len(data)
                self.session.send(DATA, self.id, data)
        finally:
            self._thread_done()

    def _pump_in(self) -> None:
        """Line -> local socket; each delivered chunk is granted back to the peer."""
        try:
            while True:
                item = self.inbound.get()
                if self.closed:
                    return
                try:
                    if item is None:
                        self.local.shutdown(_socket.SHUT_WR)
                        self._finished(got_eof=True)
                        return
                    self.local.sendall(item)
                except OSError:
                    self.abort(notify_peer=True)
                    return
                self.session.send(CREDIT, self.id, CREDIT_PAYLOAD.pack(len(item)))
        finally:
            self._thread_done()

    def _finished(self, *, sent_eof: bool = False, got_eof: bool = False) -> None:
        with self.cond:
            self.sent_eof |= sent_eof
            self.got_eof |= got_eof
            done = self.sent_eof and self.got_eof
        if done:
            self.session.forget(self.id, self)

    def abort(self, *, notify_peer: bool) -> None:
        """Tear the channel down at once (peer reset, local error, or the line went away)."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.cond.notify_all()
        self.session.forget(self.id, self)
        if notify_peer:
            self.session.send(CLOSE, self.id)
        with contextlib.suppress(OSError):
            self.local.shutdown(_socket.SHUT_RDWR)
        self.inbound.put(None)

    def _thread_done(self) -> None:
        with self.cond:
            self._threads_left -= 1
            last = self._threads_left == 0
        if last:
            self.local.close()


class MuxSession:
    """One end of the line: frames in, frames out, a table of channels.

    ``on_open`` is called with the local socket of each channel the peer opens (guest side);
    returning False refuses it. ``on_ready`` fires when the peer shows it is listening
    (``HELLO``/``PONG``), ``on_reset`` when the peer restarted and old channels were dropped.
    """

    def __init__(
        self,
        line: Line,
        *,
        on_open: Callable[[_socket.socket], bool] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.line = line
        self.on_open = on_open
        self.on_ready = on_ready
        self.channels: dict[int, _Channel] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._decoder = FrameDecoder()
        self._next_id = 1
        self.closed = False
        self.ready = threading.Event()

    # -- sending --------------------------------------------------------------------------------

    def send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        frame = encode_frame(kind, channel, payload)
        with self._write_lock:
            if self.closed:
                return
            try:
                self.line.write(frame)
            except OSError as exc:
                log.debug("mux: line write failed: %s", exc)

    def open_channel(self, local: _socket.socket) -> int:
        """Carry ``local`` to the peer as a new channel (host side)."""
        with self._lock:
            if self.closed:
                raise MuxClosed("session closed")
            channel_id = self._next_id
            self._next_id = self._next_id % 0xFFFFFFFF + 1
            chan = _Channel(self, channel_id, local)
            self.channels[channel_id] = chan
        self.send(OPEN, channel_id)
        chan.start()
        return channel_id

    def forget(self, channel_id: int, chan: _Channel | None = None) -> None:
        """Drop a channel from the table; with ``chan``, only if the number is still that
        channel's (a peer that lost its state, e.g. a new host after a VM restore, reuses
        numbers, and the stale channel's teardown must not drop its successor)."""
        with self._lock:
            if chan is None or self.channels.get(channel_id) is chan:
                self.channels.pop(channel_id, None)

    # -- receiving ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Handle bytes read from the line."""
        try:
            frames = self._decoder.feed(data)
        except MuxError as exc:
            log.warning("mux: %s; dropping every channel", exc)
            self.drop_channels()
            return
        for kind, channel, payload in frames:
            self._dispatch(kind, channel, payload)

    def _dispatch(self, kind: int, channel_id: int, payload: bytes) -> None:
        if kind == PING:
            self.send(PONG, CONTROL_CHANNEL)
            return
        if kind in (HELLO, PONG):
            if kind == HELLO and self.ready.is_set():
                log.info("mux: peer restarted; dropping every channel")
                self.drop_channels()
            self.ready.set()
            if self.on_ready is not None:
                self.on_ready()
            return
        if kind == OPEN:
            self._accept_open(channel_id)
            return
        with self._lock:
            chan = self.channels.get(channel_id)
        if chan is None:
            if kind in (DATA, EOF):
                self.send(CLOSE, channel_id)
            return
        if kind == DATA:
            chan.inbound.put(payload)
        elif kind == EOF:
            chan.inbound.put(None)
        elif kind == CREDIT and len(payload) == CREDIT_PAYLOAD.size:
            chan.grant(CREDIT_PAYLOAD.unpack(payload)[0])
        elif kind == CLOSE:
            chan.abort(notify_peer=False)

    def _accept_open(self, channel_id: int) -> None:
        if self.on_open is None:
            self.send(CLOSE, channel_id)
            return
        mine, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        with self._lock:
            stale = self.channels.pop(channel_id, None)
            chan = _Channel(self, channel_id, mine)
            self.channels[channel_id] = chan
        if stale is not None:
            stale.abort(notify_peer=False)
        if not self.on_open(theirs):
            theirs.close()
            self.forget(channel_id)
            mine.close()
            self.send(CLOSE, channel_id)
            return
        chan.start()

    def drop_channels(self) -> None:
        with self._lock:
            channels = list(self.channels.values())
        for chan in channels:
            chan.abort(notify_peer=False)

    def close(self) -> None:
        with self._write_lock:
            self.closed = True
        self.drop_channels()


class SerialListener(Listener):
    """The guest agent's listener on a virtio-serial port; accepted channels are plain sockets.

    A background thread reads the port. When the host side is not connected, the port reads
    as end-of-file: every open channel is dropped and the thread polls until the host returns.
    """

    #: Channels the host opened that the agent has not accepted yet; beyond this, refuse.
    BACKLOG = 128

    def __init__(self, fd: int, *, name: str = "serial") -> None:
        self.name = name
        self._line = Line(fd)
        self._pending: queue.Queue[_socket.socket | None] = queue.Queue()
        self._closed = threading.Event()
        self.session = MuxSession(self._line, on_open=self._queue_channel)
        self._reader = threading.Thread(target=self._read_loop, name="mux-line", daemon=True)
        self._reader.start()

    def _queue_channel(self, sock: _socket.socket) -> bool:
        if self._closed.is_set() or self._pending.qsize() >= self.BACKLOG:
            return False
        self._pending.put(sock)
        return True

    def _read_loop(self) -> None:
        # Sent from this thread: a virtio port blocks writers until the host side connects,
        # and opening the listener must not wait for that.
        self.session.send(HELLO, CONTROL_CHANNEL)
        connected = True
        while not self._closed.is_set():
            data = self._line.read()
            if self._closed.is_set():
                return
            if not data:
                if connected:
                    log.info("mux: host side of %s disconnected; dropping channels", self.name)
                    self.session.drop_channels()
                    self.session._decoder.reset()
                    connected = False
                time.sleep(0.05)
                continue
            connected = True
            self.session.feed(data)

    def accept(self) -> _socket.socket:
        """Block until the host opens a channel; raises :class:`MuxClosed` once closed."""
        if self._closed.is_set():
            raise MuxClosed(f"listener on {self.name} is closed")
        sock = self._pending.get()
        if sock is None:
            self._pending.put(None)
            raise MuxClosed(f"listener on {self.name} is closed")
        return sock

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.session.close()
        self._line.interrupt()
        self._reader.join(5)
        self._pending.put(None)
        while True:
            try:
                sock = self._pending.get_nowait()
            except queue.Empty:
                break
            if sock is None:
                self._pending.put(None)
                break
            sock.close()
        self._line.close()


def resolve_port(path: str, timeout: float = 10.0) -> str:
    """The device node of a named virtio port, waiting for it to appear.

    ``/dev/virtio-ports/<name>`` is a udev symlink; a guest without udev only has
    ``/dev/vportNpM``, whose name is in sysfs. (Plain ``os.path``: this is on the agent's start
    path, which does without pathlib.)
    """
    deadline = time.monotonic() + timeout
    parent, name = os.path.split(path)
    while True:
        if os.path.exists(path):
            return path
        if parent == VIRTIO_PORTS_DIR and os.path.isdir(VIRTIO_PORTS_SYSFS):
            for entry in os.listdir(VIRTIO_PORTS_SYSFS):
                with contextlib.suppress(OSError):
                    if _read_name(entry) == name and os.path.exists(os.path.join("/dev", entry)):
                        return os.path.join("/dev", entry)
        if time.monotonic() >= deadline:
            raise MuxError(f"serial port {path} did not appear within {timeout:.0f}s")
        time.sleep(0.05)


def _read_name(port: str) -> str:
    with open(os.path.join(VIRTIO_PORTS_SYSFS, port, "name"), encoding="utf-8") as file:
        return file.read().strip()


def open_serial_listener(path: str | os.PathLike[str], timeout: float = 10.0) -> SerialListener:
    """Listen for multiplexed connections on the serial port (or tty) at ``path``."""
    device = resolve_port(os.fspath(path), timeout)
    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise MuxError(f"cannot open serial port {device}: {exc.strerror}") from exc
    if os.isatty(fd):
        tty.setraw(fd)
    return SerialListener(fd, name=str(device))
