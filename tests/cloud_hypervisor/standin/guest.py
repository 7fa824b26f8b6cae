"""What runs "inside" a stand-in VM.

A real VM runs the guest agent on vsock port 1024. The stand-in has no VM, so it runs the
guest agent as a host process through the process backend (``agent``), or, for tests of the
transport alone, an in-process echo service (``echo``). ``none`` is a guest whose agent never
listens: every CONNECT is refused the way a real VM refuses it (connection closed, no OK).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Protocol

#: The guest agent's vsock port (vmsandbox.hypervisor.base.GUEST_AGENT_PORT; not imported to
#: keep the stand-in's start-up fast, checked by the tests).
GUEST_AGENT_PORT = 1024


class Guest(Protocol):
    def set_disks(self, disks: dict[str, str]) -> None:
        """The VM's disks by serial; called before start and after every hot-plug."""

    def start(self) -> None: ...
    def open_stream(self, port: int) -> socket.socket | None: ...
    def alive(self) -> bool: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop(self) -> None: ...


class EchoGuest:
    """Echoes every byte back on port 1024: enough to test the hybrid-vsock path end to end."""

    def __init__(self) -> None:
        self._running = False
        self._ends: list[socket.socket] = []
        self.disks: dict[str, str] = {}

    def set_disks(self, disks: dict[str, str]) -> None:
        self.disks = dict(disks)

    def start(self) -> None:
        self._running = True

    def open_stream(self, port: int) -> socket.socket | None:
        if not self._running or port != GUEST_AGENT_PORT:
            return None
        host_end, guest_end = socket.socketpair()
        self._ends.append(guest_end)
        threading.Thread(target=self._echo, args=(guest_end,), daemon=True).start()
        return host_end

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)

    def alive(self) -> bool:
        return self._running

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def stop(self) -> None:
        self._running = False
        for end in self._ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        self._ends.clear()


class SilentGuest:
    """A guest that boots but never listens on any vsock port."""

    def set_disks(self, disks: dict[str, str]) -> None:
        pass

    def start(self) -> None:
        pass

    def open_stream(self, port: int) -> socket.socket | None:
        return None

    def alive(self) -> bool:
        return True

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def stop(self) -> None:
        pass
