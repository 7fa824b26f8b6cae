"""Where the guest agent listens: one interface over unix sockets, vsock and virtio-serial.

Every listener hands out plain stream sockets from ``accept()``, so the agent's request loop
never knows which transport carried the connection. They are the C socket type (``_socket``):
the ``socket`` module wraps it in enums and selectors the agent's start path has no time for.
"""

from __future__ import annotations

import _socket
import contextlib
import os

from vmsandbox.errors import VMSandboxError

VSOCK_DEVICE = "/dev/vsock"
SERIAL_PORT = "/dev/virtio-ports/io.vmsandbox.agent"
DEFAULT_VSOCK_PORT = 1024


class TransportError(VMSandboxError):
    step = "guest listen"


class Listener:
    """Hands out connected stream sockets (a plain base class: the agent's start path skips typing)."""

    def accept(self) -> _socket.socket:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SocketListener(Listener):
    """A listening unix or vsock socket."""

    def __init__(self, sock: _socket.socket, cleanup: str | None = None) -> None:
        self._sock = sock
        self._cleanup = cleanup

    def accept(self) -> _socket.socket:
        fd, _ = self._sock._accept()  # type: ignore[attr-defined]  # what socket.socket.accept() wraps
        return _socket.socket(fileno=fd)

    def close(self) -> None:
        self._sock.close()
        if self._cleanup is not None:
            _unlink(self._cleanup)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def listen_unix(path: str) -> SocketListener:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _unlink(path)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on unix:{path}: {exc}") from exc
    return SocketListener(sock, cleanup=path)


def listen_vsock(port: int) -> SocketListener:
    family = getattr(_socket, "AF_VSOCK", None)
    if family is None:
        raise TransportError("this Python has no AF_VSOCK support")
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.bind((_socket.VMADDR_CID_ANY, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on vsock:{port}: {exc}") from exc
    return SocketListener(sock)


def listen_serial(path: str) -> Listener:
    # Imported here: the multiplexer is only needed inside QEMU guests.
    from vmsandbox.guest.mux import open_serial_listener

    listener: Listener = open_serial_listener(path)
    return listener


def resolve_auto() -> str:
    """The concrete spec ``auto`` stands for in this guest."""
    if os.path.exists(SERIAL_PORT):
        return f"serial:{SERIAL_PORT}"
    if os.path.exists(VSOCK_DEVICE):
        return f"vsock:{DEFAULT_VSOCK_PORT}"
    raise TransportError(f"--listen auto: neither {SERIAL_PORT} nor {VSOCK_DEVICE} exists")


def open_listener(spec: str) -> Listener:
    """Open the listener named by ``unix:PATH``, ``vsock:PORT``, ``serial:PATH`` or ``auto``."""
    if spec == "auto":
        spec = resolve_auto()
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise TransportError(f"bad --listen {spec!r}; expected unix:PATH, vsock:PORT, serial:PATH or auto")
    if scheme == "unix":
        return listen_unix(rest)
    if scheme == "vsock":
        if not rest.isdigit():
            raise TransportError(f"bad vsock port {rest!r} in --listen {spec!r}")
        return listen_vsock(int(rest))
    if scheme == "serial":
        return listen_serial(rest)
    raise TransportError(f"unknown transport {scheme!r} in --listen {spec!r}")
