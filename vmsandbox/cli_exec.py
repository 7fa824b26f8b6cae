"""``vmsandbox exec``, ``cp`` and ``ls``: through a sandbox's node agent, as ``kubectl exec``/``cp`` for pods.

With ``-t`` the local terminal is put in raw mode, as kubectl does: every key (Ctrl-C included)
goes to the remote terminal, whose size follows the local window. Archives from a sandbox are
unpacked with tarfile's ``data`` filter: nothing in them may land outside the destination.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import tarfile
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

from websocket import WebSocketException

from vmsandbox.errors import VMSandboxError
from vmsandbox.sdk.remote import Agent, ExecSession, list_path, read_path, write_path

#: (namespace, name) -> the sandbox's node agent, with the caller's credentials.
AgentLookup = Callable[[str, str], Agent]


class CopyError(VMSandboxError):
    step = "cp"


def _window() -> tuple[int, int]:
    """The local terminal's rows and columns (of the terminal itself, not $LINES/$COLUMNS)."""
    size = os.get_terminal_size(sys.stdin.fileno())
    return size.lines, size.columns


def _pump_stdin(session: ExecSession) -> None:
    try:
        while True:
            data = os.read(sys.stdin.fileno(), 65536)
            if not data:
                session.close_stdin()
                return
            session.send_stdin(data)
    except OSError:
        return


@contextlib.contextmanager
def _raw_terminal(session: ExecSession) -> Iterator[None]:
    """Raw mode and window-size updates while a ``-t`` session runs; restored on the way out."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    done = threading.Event()

    def forward() -> None:
        while not done.is_set():
            if signal.sigtimedwait([signal.SIGWINCH], 0.2) is not None:
                with contextlib.suppress(OSError, WebSocketException):
                    session.resize(*_window())

    # SIGWINCH is blocked here and in every thread started from here on, and taken by the
    # forwarder alone: a handler would interrupt the main thread's read of the stream, which a
    # TLS connection (the API path) does not survive.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})
    tty.setraw(fd)
    sender = threading.Thread(target=forward, daemon=True)
    try:
        session.resize(*_window())
        sender.start()
        yield
    finally:
        done.set()
        sender.join(1.0)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGWINCH})


def run_exec(
    agent: Agent, namespace: str, name: str, command: list[str], *, stdin: bool, want_tty: bool
) -> int:
    """Run ``command`` in the sandbox wired to this process's stdio; returns its exit code."""
    use_tty = want_tty and sys.stdin.isatty()
    with ExecSession(agent, namespace, name, command, stdin=stdin, tty=use_tty) as session:
        with _raw_terminal(session) if use_tty else contextlib.nullcontext():
            if stdin:
                threading.Thread(target=_pump_stdin, args=(session,), daemon=True).start()
            for channel, data in session.output():
                out = sys.stdout.buffer if channel == 1 else sys.stderr.buffer
                out.write(data)
                out.flush()
        assert session.exit_code is not None
        return session.exit_code


# ---- cp ------------------------------------------------------------------------------------


def remote_spec(value: str) -> tuple[str, str] | None:
    """``(name, path)`` for ``NAME:/path``; None for a local path (one with a slash before any colon)."""
    name, sep, path = value.partition(":")
    if not sep or not name or "/" in name:
        return None
    if not path.startswith("/"):
        raise CopyError(f"{value!r}: the path inside the sandbox must be absolute (NAME:/path)")
    return name, path


def _tar_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in sorted(directory.iterdir()):
            tar.add(entry, arcname=entry.name)
    return buffer.getvalue()


def copy_to(agent: Agent, namespace: str, name: str, local: Path, remote: str) -> None:
    if local.is_dir():
        write_path(agent, namespace, name, remote, _tar_of(local), kind="tar")
    elif local.is_file():
        with local.open("rb") as file:  # sent by sendfile, not read here
            mode = os.fstat(file.fileno()).st_mode & 0o777
            write_path(agent, namespace, name, remote, file, mode=mode)
    else:
        raise CopyError(f"{local}: no such file or directory")


class _ChunkStream(io.RawIOBase):
    """A readable file object over an iterator of chunks (tarfile's stream input)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self.rest:
            try:
                self.rest = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self.rest))
        buffer[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n


def copy_from(agent: Agent, namespace: str, name: str, remote: str, local: Path) -> None:
    with read_path(agent, namespace, name, remote) as (kind, chunks):
        if kind == "dir":
            local.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BufferedReader(_ChunkStream(chunks)), mode="r|") as tar:
                tar.extractall(local, filter="data")
            return
        target = local / Path(remote).name if local.is_dir() else local
        with target.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)


def run_cp(agent_for: AgentLookup, namespace: str, src: str, dst: str) -> int:
    source, dest = remote_spec(src), remote_spec(dst)
    if dest is not None and source is None:
        copy_to(agent_for(namespace, dest[0]), namespace, dest[0], Path(src), dest[1])
    elif source is not None and dest is None:
        copy_from(agent_for(namespace, source[0]), namespace, source[0], source[1], Path(dst))
    else:
        raise CopyError("exactly one of SRC and DST must be NAME:/path")
    return 0


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    namespaced: Callable[[argparse.ArgumentParser], None],
) -> None:
    ex = sub.add_parser("exec", help="run a command in a running sandbox (as kubectl exec)")
    ex.add_argument("-i", "--stdin", action="store_true", help="pass this terminal's input")
    ex.add_argument("-t", "--tty", action="store_true", help="allocate a terminal (raw mode here)")
    ex.add_argument("name")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    namespaced(ex)
    at = sub.add_parser(
        "attach", help="follow a running sandbox's main process (its output, and stdin with -i)"
    )
    at.add_argument("-i", "--stdin", action="store_true", help="pass this terminal's input")
    at.add_argument(
        "-t", "--tty", action="store_true", help="the main process has a terminal (raw mode here)"
    )
    at.add_argument("name")
    namespaced(at)
    cp = sub.add_parser("cp", help="copy files or directories to or from a sandbox (NAME:/path on one side)")
    cp.add_argument("src")
    cp.add_argument("dst")
    namespaced(cp)
    ls = sub.add_parser("ls", help="list a directory inside a sandbox")
    ls.add_argument("target", help="NAME:/path")
    namespaced(ls)


def print_listing(agent: Agent, namespace: str, name: str, path: str) -> int:
    for entry in list_path(agent, namespace, name, path):
        suffix = (
            "/" if entry["kind"] == "dir" else f" -> {entry['target']}" if entry["kind"] == "symlink" else ""
        )
        print(f"{entry['mode'] & 0o7777:04o} {entry['size']:>12} {entry['name']}{suffix}")
    return 0
