"""``--console-socket``: hand the caller a pty master the way runc does.

The container's real terminal is a pty inside the guest. On the host the runtime opens a second
pty, sends its master over the caller's unix socket in one ``SCM_RIGHTS`` message whose data is
the pty's name, and gives the slave to the relay, which copies bytes between it and the guest.
The host pty is put in raw mode so that only the guest's terminal processes input and output.
"""

from __future__ import annotations

import os
import socket
import tty
from pathlib import Path

from vmsandbox.runtime.errors import RuntimeError_


class ConsoleError(RuntimeError_):
    step = "console"


def open_host_pty() -> tuple[int, int]:
    """A raw (master, slave) pty pair."""
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave


def send_master(socket_path: Path, master: int, name: str) -> None:
    """One message: data is the pty's name, ancillary data the master fd (runc's format)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(socket_path))
            socket.send_fds(sock, [name.encode()], [master])
    except OSError as exc:
        raise ConsoleError(f"cannot send the pty master to {socket_path}: {exc}") from exc


def open_console_path(path: Path) -> int:
    """``--console PATH``: an existing pty slave the caller wants used as the terminal."""
    try:
        return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConsoleError(f"cannot open console {path}: {exc}") from exc
