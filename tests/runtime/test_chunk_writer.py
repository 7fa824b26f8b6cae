"""The guest's chunk writer sends a file by sendfile on the C socket type the agent hands out."""

from __future__ import annotations

import _socket
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsandbox.guest import streams
from vmsandbox.guest.wire import ProtocolError


@pytest.fixture
def pair() -> Iterator[tuple[_socket.socket, _socket.socket]]:
    """A connected pair of the C socket type, as the agent's mux and listeners hand out."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_file_goes_out_as_one_chunk_from_its_position(
    tmp_path: Path, pair: tuple[_socket.socket, _socket.socket]
) -> None:
    ours, theirs = pair  # 60 kB: within the pair's buffers, so nothing need read meanwhile
    data = os.urandom(60_000)
    (tmp_path / "f").write_bytes(data)
    with (tmp_path / "f").open("rb") as file:
        file.seek(1000)
        sent = streams.ChunkWriter(ours).send_file(streams.STDOUT, file, 40_000)
        assert sent == 40_000
        assert file.tell() == 41_000  # the next chunk starts where this one ended
        assert streams.ChunkWriter(ours).send_file(streams.STDOUT, file, 40_000) == 19_000
        assert streams.ChunkWriter(ours).send_file(streams.STDOUT, file, 40_000) == 0
    ours.shutdown(_socket.SHUT_WR)
    got = []
    while (chunk := streams.recv_chunk(theirs)) is not None:
        got.append(chunk)
    assert got == [(streams.STDOUT, data[1000:41_000]), (streams.STDOUT, data[41_000:])]


def test_a_file_that_shrinks_while_sent_breaks_the_stream_rather_than_arriving_short(
    tmp_path: Path, pair: tuple[_socket.socket, _socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = pair
    (tmp_path / "f").write_bytes(b"x" * 1000)
    real_fstat = os.fstat

    def fstat_before_the_truncation(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        os.truncate(tmp_path / "f", 400)  # shrinks between the size check and the send
        return st

    monkeypatch.setattr(streams.os, "fstat", fstat_before_the_truncation)
    with (tmp_path / "f").open("rb") as file, pytest.raises(ProtocolError, match="shrank"):
        streams.ChunkWriter(ours).send_file(streams.STDOUT, file, 1000)
    with pytest.raises(ProtocolError):  # the header promised 1000 bytes; 400 came, then the end
        streams.recv_chunk(theirs)
