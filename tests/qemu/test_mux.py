"""The agent serial multiplexer, both ends, with no VM: a socketpair or a pty is the serial line."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmsandbox.guest.mux import (
    HELLO,
    MAX_PAYLOAD,
    WINDOW,
    FrameDecoder,
    MuxClosed,
    MuxError,
    SerialListener,
    encode_frame,
    open_serial_listener,
)
from vmsandbox.hypervisor.qemu.mux import MuxProxy


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def recv_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


class Guest:
    """A guest agent stand-in: serves each accepted channel with ``handler`` in a thread."""

    def __init__(self, listener: SerialListener, handler: Callable[[socket.socket], None]) -> None:
        self.listener = listener
        self.handler = handler
        self.accepted = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):  # the agent's C socket type is no context manager
            self.handler(conn)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def sha_then_echo(conn: socket.socket) -> None:
    """Reads everything, then answers with its sha256 (exercises half-close)."""
    conn.sendall(hashlib.sha256(recv_all(conn)).hexdigest().encode())


class Pair:
    def __init__(self, tmp: Path, handler: Callable[[socket.socket], None]) -> None:
        host_end, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.host_end, self.guest_end = host_end, guest_end
        self.agent_sock = tmp / "agent.sock"
        self.listener = SerialListener(os.dup(guest_end.fileno()), name="test-line")
        self.guest = Guest(self.listener, handler)
        self.proxy = MuxProxy(host_end, self.agent_sock)
        self.thread = threading.Thread(target=self.proxy.run, daemon=True)
        self.thread.start()
        wait_for(self.agent_sock.exists, what="agent.sock")

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(str(self.agent_sock))
        return sock

    def close(self) -> None:
        self.proxy.stop()
        self.listener.close()
        self.thread.join(5)
        self.host_end.close()
        self.guest_end.close()


@pytest.fixture
def make_pair(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], Pair]]:
    pairs: list[Pair] = []
    baseline = threading.active_count()

    def make(handler: Callable[[socket.socket], None]) -> Pair:
        pair = Pair(tmp_path, handler)
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        pair.close()
    # Every pump thread ends once its channel is gone: nothing leaks.
    wait_for(
        lambda: threading.active_count() <= baseline,
        what=f"mux threads to exit: {[t.name for t in threading.enumerate()]}",
    )


def test_many_concurrent_channels_carry_their_own_bytes(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(echo)
    results: dict[int, bool] = {}

    def client(n: int) -> None:
        payload = os.urandom(1000 + n * 997)
        with pair.connect() as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            results[n] = recv_all(sock) == payload

    threads = [threading.Thread(target=client, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == dict.fromkeys(range(40), True)
    assert pair.guest.accepted == 40
    wait_for(lambda: not pair.proxy.session.channels and not pair.listener.session.channels, what="close")


def test_large_payload_both_ways_beyond_the_credit_window(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(echo)
    payload = os.urandom(8 * WINDOW + 12345)
    received = bytearray()
    with pair.connect() as sock:
        reader = threading.Thread(target=lambda: received.extend(recv_all(sock)))
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader.join(60)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_half_close_lets_the_guest_answer_after_eof(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(sha_then_echo)
    payload = os.urandom(3 * MAX_PAYLOAD + 7)
    with pair.connect() as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock).decode() == hashlib.sha256(payload).hexdigest()


def test_guest_closing_a_channel_ends_the_host_connection(make_pair: Callable[..., Pair]) -> None:
    def greet_and_hang_up(conn: socket.socket) -> None:
        conn.sendall(b"bye")

    pair = make_pair(greet_and_hang_up)
    with pair.connect() as sock:
        assert recv_all(sock) == b"bye"
        # The host may keep writing into a channel the guest closed without wedging the line.
        with pytest.raises(OSError):
            for _ in range(200):
                sock.sendall(b"x" * 65536)
                time.sleep(0.001)
    with pair.connect() as sock:
        assert recv_all(sock) == b"bye"
    wait_for(lambda: not pair.proxy.session.channels and not pair.listener.session.channels, what="close")


def test_host_abort_drops_the_guest_channel(make_pair: Callable[..., Pair]) -> None:
    seen: list[bytes] = []

    def record(conn: socket.socket) -> None:
        try:
            seen.append(recv_all(conn))
        except OSError:
            seen.append(b"<reset>")

    pair = make_pair(record)
    sock = pair.connect()
    sock.sendall(b"partial")
    wait_for(lambda: len(pair.listener.session.channels) == 1, what="guest channel")
    sock.close()
    wait_for(lambda: len(seen) == 1, what="guest to see the close")
    assert seen[0] in (b"partial", b"<reset>")
    wait_for(lambda: not pair.proxy.session.channels and not pair.listener.session.channels, what="close")


def test_a_stalled_channel_does_not_block_the_others(make_pair: Callable[..., Pair]) -> None:
    release = threading.Event()

    def stall_first(conn: socket.socket) -> None:
        head = conn.recv(5)
        if head == b"stall":
            release.wait(30)
            recv_all(conn)
            conn.sendall(b"drained")
        else:
            conn.sendall(head)
            echo(conn)

    pair = make_pair(stall_first)
    stalled = pair.connect()
    stalled.sendall(b"stall")

    def flood() -> None:
        stalled.sendall(os.urandom(4 * WINDOW))
        stalled.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=flood)
    writer.start()
    time.sleep(0.3)
    for _ in range(5):
        with pair.connect() as sock:
            sock.sendall(b"ping!")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"ping!"
    release.set()
    writer.join(30)
    assert recv_all(stalled) == b"drained"
    stalled.close()


def test_guest_restart_drops_stale_channels(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(lambda conn: recv_all(conn))
    sock = pair.connect()
    wait_for(lambda: len(pair.proxy.session.channels) == 1, what="channel")
    # A restarted guest agent announces itself again; whatever the host had open is gone.
    pair.listener.session.send(HELLO, 0)
    assert recv_all(sock) == b""
    sock.close()


def test_accept_after_close_raises_an_oserror(tmp_path: Path) -> None:
    host_end, guest_end = socket.socketpair()
    listener = SerialListener(os.dup(guest_end.fileno()))
    listener.close()
    with pytest.raises(MuxClosed) as info:
        listener.accept()
    assert isinstance(info.value, OSError)
    assert "closed" in str(info.value)
    host_end.close()
    guest_end.close()


def test_proxy_serves_nothing_until_the_guest_listens(tmp_path: Path) -> None:
    host_end, guest_end = socket.socketpair()
    proxy = MuxProxy(host_end, tmp_path / "agent.sock")
    thread = threading.Thread(target=proxy.run, daemon=True)
    thread.start()
    time.sleep(0.6)
    assert not (tmp_path / "agent.sock").exists()
    listener = SerialListener(os.dup(guest_end.fileno()))
    wait_for((tmp_path / "agent.sock").exists, what="agent.sock")
    proxy.stop()
    listener.close()
    thread.join(5)
    assert not (tmp_path / "agent.sock").exists()
    host_end.close()
    guest_end.close()


def test_decoder_rejects_a_corrupt_line() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(encode_frame(4, 7, b"abc")[:5])
    assert frames == []
    assert decoder.feed(encode_frame(4, 7, b"abc")[5:]) == [(4, 7, b"abc")]
    with pytest.raises(MuxError, match="corrupt frame"):
        decoder.feed(b"\x00\x00\x00\x01\x63\xff\xff\xff\xff")
    with pytest.raises(MuxError, match="exceeds"):
        encode_frame(4, 1, b"x" * (MAX_PAYLOAD + 1))


def test_missing_port_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MuxError, match=r"serial port .*nope did not appear"):
        open_serial_listener(tmp_path / "nope", timeout=0.2)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
def test_proxy_process_over_a_pty_and_exit_on_line_close(tmp_path: Path) -> None:
    """QEMU stand-in: socat serves a unix socket (the chardev) bridged to a pty (the guest port)."""
    line, tty, agent = tmp_path / "agent-serial.sock", tmp_path / "vport", tmp_path / "agent.sock"
    socat = subprocess.Popen(
        ["socat", f"UNIX-LISTEN:{line}", f"PTY,link={tty},raw,echo=0"], stderr=subprocess.DEVNULL
    )
    proxy = None
    listener = None
    try:
        wait_for(line.exists, what="socat's socket")
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmsandbox.hypervisor.qemu.mux",
                "--line",
                str(line),
                "--listen",
                str(agent),
            ],
            stderr=subprocess.PIPE,
        )
        # socat opens the pty once its socket has a client, as QEMU's port only carries data then.
        wait_for(tty.exists, what="socat's pty")
        listener = open_serial_listener(tty)
        Guest(listener, echo)
        wait_for(agent.exists, what="agent.sock")
        for size in (1, MAX_PAYLOAD * 3 + 1):
            payload = os.urandom(size)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(20)
                sock.connect(str(agent))
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(sock) == payload
        socat.terminate()
        socat.wait(5)
        # QEMU going away closes the line: the proxy exits and removes its socket.
        assert proxy.wait(10) == 0
        assert not agent.exists()
    finally:
        if listener is not None:
            listener.close()
        for proc in (proxy, socat):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_new_host_end_after_a_restore_is_served_and_stale_channels_are_dropped(tmp_path: Path) -> None:
    """A restored VM: the guest's listener, with a channel it still thinks open, meets a new host
    proxy that knows nothing of the old channels and numbers its own from 1 again."""
    host_end, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    listener = SerialListener(os.dup(guest_end.fileno()), name="restored-line")
    guest = Guest(listener, echo)
    old = MuxProxy(host_end, tmp_path / "old.sock")
    old_thread = threading.Thread(target=old.run, daemon=True)
    old_thread.start()
    wait_for((tmp_path / "old.sock").exists, what="old.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.connect(str(tmp_path / "old.sock"))
    stale.sendall(b"before")
    wait_for(lambda: len(listener.session.channels) == 1, what="the guest's channel")
    # The old host side goes away without a word to the guest (its memory is the snapshot's).
    old.stop()
    old_thread.join(5)
    stale.close()
    new = MuxProxy(host_end, tmp_path / "new.sock")
    new_thread = threading.Thread(target=new.run, daemon=True)
    new_thread.start()
    try:
        wait_for((tmp_path / "new.sock").exists, what="the new proxy to see the guest answer")
        for _ in range(3):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(20)
                sock.connect(str(tmp_path / "new.sock"))
                sock.sendall(b"after")
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(sock) == b"after"
        assert guest.accepted == 4
        wait_for(lambda: len(listener.session.channels) == 0, what="stale channels to be dropped")
    finally:
        new.stop()
        new_thread.join(5)
        listener.close()
        host_end.close()
        guest_end.close()
