"""File bodies to and from ``/files`` over one HTTP connection, without a copy per chunk.

An upload of a file goes with ``sendfile`` (plain HTTP) or through one reused buffer (TLS), with
its length announced; pieces go chunked, each written with its framing in one gathered send.
A download is read in large pieces straight from the connection. Where the environment names a
proxy for the endpoint, :mod:`requests` carries the request instead, as it honours proxies.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import os
import socket
import ssl
import stat
import urllib.request
from collections.abc import Iterable, Iterator
from typing import BinaryIO, cast
from urllib.parse import urlsplit

#: Bytes per piece read from a file (TLS uploads) or from a download.
PIECE = 1024 * 1024
#: The socket buffers asked for (the kernel caps them): more in flight, fewer wake-ups.
SOCKET_BUFFER = 4 * 1024 * 1024
CONNECT_TIMEOUT = 10.0

Body = bytes | BinaryIO | Iterable[bytes]


class TransferError(Exception):
    """The connection failed (``status`` None) or the server answered ``status`` with ``body``."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def proxied(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy (then :mod:`requests` is used)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    return bool(proxies.get(parts.scheme)) and not urllib.request.proxy_bypass(parts.hostname or "")


def tls_context(verify: str | bool, cert: str | tuple[str, str] | None) -> ssl.SSLContext:
    """``verify`` and ``cert`` as :mod:`requests` takes them; one context per setting and per
    version of the files it reads, reused by every connection (loading the system's CA store
    costs tens of milliseconds, a noticeable share of an exec)."""
    files = [verify] if isinstance(verify, str) else []
    files += list(cert) if isinstance(cert, tuple) else [cert] if cert else []
    return _context(verify, cert, tuple(_version(f) for f in files))


def _version(path: str) -> tuple[float, int]:
    try:
        info = os.stat(path)
    except OSError:
        return (0.0, 0)  # loading it will say what is wrong
    return (info.st_mtime, info.st_size)


@functools.lru_cache(maxsize=16)
def _context(
    verify: str | bool, cert: str | tuple[str, str] | None, _versions: tuple[tuple[float, int], ...]
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if isinstance(cert, tuple):
        ctx.load_cert_chain(*cert)
    elif cert:
        ctx.load_cert_chain(cert)
    return ctx


class Connection:
    """One request on its own connection to ``url`` (query included)."""

    def __init__(
        self, url: str, headers: dict[str, str], verify: str | bool, cert: str | tuple[str, str] | None
    ) -> None:
        parts = urlsplit(url)
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.headers = headers
        host, port = parts.hostname or "localhost", parts.port
        self.conn: http.client.HTTPConnection
        if parts.scheme == "https":
            self.conn = http.client.HTTPSConnection(
                host, port, timeout=CONNECT_TIMEOUT, context=tls_context(verify, cert)
            )
        else:
            self.conn = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT)
        try:
            self.conn.connect()
        except OSError as exc:
            raise TransferError(str(exc)) from None
        self.sock: socket.socket = cast(socket.socket, self.conn.sock)
        self.sock.settimeout(None)  # a large transfer's pauses are the server's to end
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)

    def close(self) -> None:
        self.conn.close()

    def _start(self, method: str, extra: dict[str, str]) -> None:
        self.conn.putrequest(method, self.target, skip_accept_encoding=True)
        for name, value in {**self.headers, **extra}.items():
            self.conn.putheader(name, value)
        self.conn.endheaders()

    def upload(self, method: str, body: Body) -> http.client.HTTPResponse:
        """Send the request with ``body``; the response, whatever its status."""
        try:
            if isinstance(body, bytes):
                self._start(method, {"Content-Length": str(len(body))})
                self.sock.sendall(body)
            elif isinstance(body, io.IOBase):
                self._send_file(method, cast(BinaryIO, body))
            else:
                self._start(method, {"Transfer-Encoding": "chunked"})
                self._send_chunked(body)
        except OSError as exc:
            # The server may have answered and closed early (a refusal): its answer says more.
            with contextlib.suppress(OSError, http.client.HTTPException):
                return self.conn.getresponse()
            raise TransferError(f"the upload broke: {exc}") from None
        return self._response()

    def download(self, method: str) -> http.client.HTTPResponse:
        try:
            self._start(method, {})
        except OSError as exc:
            raise TransferError(str(exc)) from None
        return self._response()

    def _response(self) -> http.client.HTTPResponse:
        try:
            return self.conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise TransferError(f"no answer: {exc}") from None

    def _send_file(self, method: str, file: BinaryIO) -> None:
        try:
            fd = file.fileno()
            info = os.fstat(fd)
        except (OSError, io.UnsupportedOperation):
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            self._start(method, {"Transfer-Encoding": "chunked"})
            self._send_chunked(iter(lambda: file.read(PIECE), b""))
            return
        offset = file.tell()
        size = max(0, info.st_size - offset)
        self._start(method, {"Content-Length": str(size)})
        if isinstance(self.sock, ssl.SSLSocket):
            _send_read(self.sock, file, size)
        else:
            sent = self.sock.sendfile(file, offset, size)
            if sent != size:  # shrank meanwhile: the announced length cannot be kept
                raise OSError(f"the file shrank while it was sent ({sent} of {size} bytes)")

    def _send_chunked(self, pieces: Iterable[bytes]) -> None:
        gather = not isinstance(self.sock, ssl.SSLSocket)
        for piece in pieces:
            if not piece:
                continue
            frame = [b"%x\r\n" % len(piece), piece, b"\r\n"]
            if gather:
                _sendmsg_all(self.sock, frame)
            else:
                self.sock.sendall(b"".join(frame))
        self.sock.sendall(b"0\r\n\r\n")


def _send_read(sock: socket.socket, file: BinaryIO, size: int) -> None:
    """``size`` bytes of ``file`` read into one reused buffer and sent from it."""
    buffer = bytearray(PIECE)
    view = memoryview(buffer)
    while size > 0:
        got = file.readinto(view[: min(PIECE, size)])  # type: ignore[attr-defined]
        if not got:
            raise OSError("the file shrank while it was sent")
        sock.sendall(view[:got])
        size -= got


def _sendmsg_all(sock: socket.socket, buffers: list[bytes]) -> None:
    views = [memoryview(b) for b in buffers]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def pieces(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """A response body in whole pieces of :data:`PIECE` bytes (the last one shorter): fewer and
    larger than what each receive brings, which measured faster for large files."""
    while True:
        try:
            piece = resp.read(PIECE)
        except (OSError, http.client.HTTPException) as exc:
            raise TransferError(f"the read ended early: {exc}") from None
        if not piece:
            return
        yield piece
