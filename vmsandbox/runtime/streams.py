"""The host end of exec and file transfers: one guest agent connection per operation.

Each operation sends its request as a JSON frame, reads the agent's :class:`Streaming` (or
:class:`Failure`) reply, and then speaks chunks (:mod:`vmsandbox.guest.streams`). Everything
here blocks; callers that serve many streams run each in its own thread.
"""

from __future__ import annotations

import _socket
import contextlib
import io
import json
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, Self, cast

from vmsandbox.guest import streams
from vmsandbox.guest.protocol import (
    REPLY,
    WRONG_STATUS,
    Attach,
    Attached,
    Exec,
    Exited,
    Failure,
    ListPath,
    Ok,
    Output,
    PathEntry,
    PathList,
    ProtocolError,
    ReadPath,
    Resize,
    StdinClose,
    StdinData,
    Streaming,
    WritePath,
    decode,
    recv_reply,
    send_frame,
)
from vmsandbox.runtime.client import AgentClient
from vmsandbox.runtime.errors import AgentError, BadPath, RuntimeError_, WrongState

Output_ = tuple[Literal[1, 2], bytes]


def _refusal(reply: Failure) -> RuntimeError_:
    """The typed error for the agent's refusal: not running, a tenant's bad path, or the agent's own."""
    if reply.step == WRONG_STATUS:
        return WrongState(reply.detail, step="exec")
    if reply.step in ("path", "tar"):
        return BadPath(reply.detail, step=reply.step)
    return AgentError(reply.detail, step=f"guest {reply.step}")


def _open(client: AgentClient, request: Exec | ReadPath | WritePath) -> tuple[socket.socket, Streaming]:
    sock = client.connect()
    try:
        send_frame(sock, request)
        reply = recv_reply(sock)
    except (OSError, ProtocolError) as exc:
        sock.close()
        raise AgentError(f"{request.op}: {exc}", step="guest agent") from exc
    if isinstance(reply, Streaming):
        return sock, reply
    sock.close()
    if isinstance(reply, Failure):
        raise _refusal(reply)
    raise AgentError(f"{request.op}: unexpected reply {reply.type!r}", step="guest agent")


def _status(payload: bytes) -> Exited | Ok | Failure:
    message = decode(REPLY, payload)
    if not isinstance(message, Exited | Ok | Failure):
        raise ProtocolError(f"unexpected status {message.type!r}")
    return message


def _next_chunk(sock: socket.socket, stream: str, cut_short: str) -> tuple[int, bytes]:
    """The next ``(channel, payload)`` of the ``stream`` (exec, read) a guest agent sends; a
    failed connection, or the agent closing it (``cut_short`` says what that leaves unknown),
    is an :class:`AgentError`."""
    try:
        chunk = streams.recv_chunk(sock)
    except (OSError, ProtocolError) as exc:
        raise AgentError(f"{stream} stream: {exc}", step="guest agent") from exc
    if chunk is None:
        raise AgentError(cut_short, step="guest agent")
    return chunk


class _SocketStream:
    """A stream over one connection to the guest agent, closed with its ``with`` block; its
    :attr:`exit_code` is known once its output has been read to the end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.exit_code: int | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ExecStream(_SocketStream):
    """A running exec: write stdin, resize, signal; iterate output until the exit code is known."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.writer = streams.ChunkWriter(sock)

    def write_stdin(self, data: bytes) -> None:
        self.writer.send(streams.STDIN, data)

    def close_stdin(self) -> None:
        self.writer.send(streams.CLOSE, bytes([streams.STDIN]))

    def resize(self, rows: int, cols: int) -> None:
        self.writer.send(streams.RESIZE, json.dumps({"Width": cols, "Height": rows}).encode())

    def signal(self, signum: int) -> None:
        self.writer.send(streams.SIGNAL, str(signum).encode())

    def output(self) -> Iterator[Output_]:
        """``(1, bytes)`` for stdout, ``(2, bytes)`` for stderr, in order; then sets :attr:`exit_code`."""
        while True:
            channel, payload = _next_chunk(
                self.sock, "exec", "the guest agent closed the exec stream before the exit status"
            )
            if channel == streams.STDOUT:
                yield 1, payload
            elif channel == streams.STDERR:
                yield 2, payload
            elif channel == streams.STATUS:
                status = _status(payload)
                if isinstance(status, Failure):
                    raise _refusal(status)
                if not isinstance(status, Exited):
                    raise AgentError(f"unexpected exec status {status.type!r}", step="guest agent")
                self.exit_code = status.exit_code
                return


def start_exec(
    client: AgentClient,
    container_id: str,
    command: list[str],
    *,
    stdin: bool = False,
    tty: bool = False,
    rows: int | None = None,
    cols: int | None = None,
) -> ExecStream:
    """Start ``command`` in the running container; raises :class:`WrongState` when it is not running."""
    request = Exec(container_id=container_id, command=command, stdin=stdin, tty=tty, rows=rows, cols=cols)
    sock, _ = _open(client, request)
    sock.settimeout(None)
    return ExecStream(sock)


class ReadStream:
    """A file's bytes (``kind`` file) or a directory's tar stream (``kind`` dir)."""

    def __init__(self, sock: socket.socket, reply: Streaming) -> None:
        self.sock = sock
        self.kind: Literal["file", "dir"] = "dir" if reply.kind == "dir" else "file"
        self.size = reply.size

    def __enter__(self) -> ReadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def chunks(self) -> Iterator[bytes]:
        while True:
            channel, payload = _next_chunk(self.sock, "read", "the guest agent closed the read stream early")
            if channel == streams.STDOUT:
                yield payload
            elif channel == streams.STATUS:
                status = _status(payload)
                if isinstance(status, Failure):
                    raise _refusal(status)
                return

    def relay(self, out: socket.socket, before: Callable[[int], bytes], after: bytes, end: bytes) -> None:
        """Each chunk of data to ``out`` as ``before(length)``, the payload, ``after``; then ``end``.

        The payload is spliced from the guest's socket without entering this process where the
        kernel allows; ``after`` goes out with the next ``before`` (or ``end``), one write, so no
        small segment waits on its own.
        """
        timeout = out.gettimeout()
        pending = b""
        try:
            with streams.Splicer(self.sock, out_timeout=timeout) as splicer:
                while True:
                    header = streams.recv_header(self.sock)
                    if header is None:
                        raise AgentError("the guest agent closed the read stream early", step="guest agent")
                    length, channel = header
                    if channel == streams.STDOUT:
                        out.sendall(pending + before(length))
                        if not splicer.move(out.fileno(), length):
                            out.sendall(_payload(self.sock, length))
                        pending = after
                        continue
                    payload = _payload(self.sock, length)
                    if channel == streams.STATUS:
                        status = _status(payload)
                        if isinstance(status, Failure):
                            raise _refusal(status)
                        out.sendall(pending + end)
                        return
        except (OSError, ProtocolError) as exc:
            raise AgentError(f"read stream: {exc}", step="guest agent") from exc


def _payload(sock: _socket.socket, length: int) -> bytes:
    buf = bytearray(length)
    if length and not streams.recv_exact_into(sock, memoryview(buf)):
        raise ProtocolError("connection closed after a chunk header")
    return bytes(buf)


def read_path(client: AgentClient, container_id: str, path: str) -> ReadStream:
    sock, reply = _open(client, ReadPath(container_id=container_id, path=path))
    sock.settimeout(None)
    return ReadStream(sock, reply)


@dataclass(frozen=True)
class FromSocket:
    """``length`` bytes of :func:`write_path`'s data still on a blocking socket: spliced on to the
    guest agent without entering this process (received and sent where the kernel refuses)."""

    sock: socket.socket
    length: int


#: What :func:`write_path` sends: a file (its bytes go by ``sendfile``), or pieces.
WriteData = BinaryIO | Iterable[bytes | FromSocket]
#: The send buffer asked for the guest connection (the kernel caps it at ``wmem_max``): a deeper
#: queue lets the sender run ahead of the guest's writes instead of waking it per 200 KiB.
SEND_BUFFER = 4 * 1024 * 1024


def write_path(
    client: AgentClient,
    container_id: str,
    path: str,
    data: WriteData,
    *,
    kind: Literal["file", "tar"] = "file",
    mode: int | None = None,
) -> None:
    """Write ``data`` to ``path`` (a file), or unpack it as a tar stream into ``path`` (a directory)."""
    sock, _ = _open(client, WritePath(container_id=container_id, path=path, kind=kind, mode=mode))
    with sock:
        sock.settimeout(None)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        writer = streams.ChunkWriter(sock, streams.FILE_CHUNK)
        try:
            _send_data(writer, data)
            writer.send(streams.CLOSE, bytes([streams.STDIN]))
            chunk = streams.recv_chunk(sock)
        except (OSError, ProtocolError) as exc:
            raise AgentError(f"write stream: {exc}", step="guest agent") from exc
        if chunk is None or chunk[0] != streams.STATUS:
            raise AgentError("the guest agent ended the write without a status", step="guest agent")
        status = _status(chunk[1])
        if isinstance(status, Failure):
            raise _refusal(status)


def _send_data(writer: streams.ChunkWriter, data: WriteData) -> None:
    if isinstance(data, io.IOBase):
        _send_file(writer, cast(BinaryIO, data))
        return
    with contextlib.ExitStack() as pipes:
        splicers: dict[int, streams.Splicer] = {}
        for piece in data:
            if isinstance(piece, FromSocket):
                splicer = splicers.get(piece.sock.fileno())
                if splicer is None:
                    splicer = splicers[piece.sock.fileno()] = pipes.enter_context(streams.Splicer(piece.sock))
                for start in range(0, piece.length, streams.MAX_CHUNK):
                    _send_spliced(writer.sock, splicer, min(streams.MAX_CHUNK, piece.length - start))
            elif piece:
                writer.send(streams.STDIN, piece)


def _send_spliced(sock: _socket.socket, splicer: streams.Splicer, length: int) -> None:
    """One stdin chunk whose ``length`` payload bytes are still on ``splicer``'s socket: moved
    from there to ``sock`` without entering this process (received and sent where the kernel
    refuses to splice)."""
    sock.sendall(_CHUNK_HEADER.pack(length, streams.STDIN))
    if not splicer.move(sock.fileno(), length):
        sock.sendall(_payload(splicer.sock, length))


#: A chunk's header as :mod:`vmsandbox.guest.streams` frames it: payload length, channel.
_CHUNK_HEADER = struct.Struct(">IB")


def _send_file(writer: streams.ChunkWriter, file: BinaryIO) -> None:
    """A file's bytes from its position on: by ``sendfile`` when it has a descriptor, read otherwise."""
    try:
        file.fileno()
    except (OSError, io.UnsupportedOperation):
        while piece := file.read(streams.FILE_CHUNK):
            writer.send(streams.STDIN, piece)
        return
    while writer.send_file(streams.STDIN, file, streams.FILE_CHUNK):
        pass


def list_path(client: AgentClient, container_id: str, path: str) -> list[PathEntry]:
    with client.connect() as sock:
        try:
            send_frame(sock, ListPath(container_id=container_id, path=path))
            reply = recv_reply(sock)
        except (OSError, ProtocolError) as exc:
            raise AgentError(f"list_path: {exc}", step="guest agent") from exc
    if isinstance(reply, Failure):
        raise _refusal(reply)
    if not isinstance(reply, PathList):
        raise AgentError(f"list_path: unexpected reply {reply.type!r}", step="guest agent")
    return reply.entries


class AttachStream(_SocketStream):
    """The sandbox's main process: its retained and new output, its stdin, its terminal size.

    It speaks the guest's JSON attach frames (the relay's own channel to the main process), so
    output first replays what the guest still holds (up to 8 MiB), then follows.
    """

    def write_stdin(self, data: bytes) -> None:
        send_frame(self.sock, StdinData.of(data))

    def close_stdin(self) -> None:
        send_frame(self.sock, StdinClose())

    def resize(self, rows: int, cols: int) -> None:
        send_frame(self.sock, Resize(rows=rows, cols=cols))

    def output(self) -> Iterator[Output_]:
        while True:
            try:
                reply = recv_reply(self.sock)
            except (OSError, ProtocolError) as exc:
                raise AgentError(f"attach stream: {exc}", step="guest agent") from exc
            if isinstance(reply, Output):
                yield (1 if reply.stream == "stdout" else 2), reply.raw()
            elif isinstance(reply, Exited):
                self.exit_code = reply.exit_code
                return
            elif isinstance(reply, Failure):
                raise _refusal(reply)


def start_attach(client: AgentClient, container_id: str) -> AttachStream:
    sock = client.connect()
    try:
        send_frame(sock, Attach(container_id=container_id, offset=0))
        reply = recv_reply(sock)
    except (OSError, ProtocolError) as exc:
        sock.close()
        raise AgentError(f"attach: {exc}", step="guest agent") from exc
    if isinstance(reply, Attached):
        sock.settimeout(None)
        return AttachStream(sock)
    sock.close()
    if isinstance(reply, Failure):
        raise _refusal(reply)
    raise AgentError(f"attach: unexpected reply {reply.type!r}", step="guest agent")
