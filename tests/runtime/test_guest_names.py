"""Names the host sends the guest agent, checked whole, and the console pty's hand-over."""

from __future__ import annotations

import _socket
import os
import socket
from pathlib import Path

import pytest

from vmsandbox.guest import containers, names
from vmsandbox.guest.containers import ContainerError, ContainerTable
from vmsandbox.guest.etcfiles import EtcFilesError, write_sandbox_files
from vmsandbox.guest.ociruntime import RuntimeSelector
from vmsandbox.guest.protocol import CreateContainer, HostPath


@pytest.mark.parametrize("cid", ["abc\n", "-abc", "a/b", "", "a" * 256])
def test_container_ids_are_checked_whole(cid: str, tmp_path: Path) -> None:
    table = ContainerTable(str(tmp_path), RuntimeSelector("runc", str(tmp_path / "oci")))
    req = CreateContainer(
        container_id=cid,
        spec={},
        rootfs=HostPath(path=str(tmp_path)),
        terminal=False,
    )
    with pytest.raises(ContainerError, match="invalid container id"):
        table.create(req)
    assert not (tmp_path / "containers").exists(), "nothing is made for a refused id"


@pytest.mark.parametrize("hostname", ["web\n", "web\nevil", "-web", "web-"])
def test_hostnames_are_checked_whole(hostname: str, tmp_path: Path) -> None:
    with pytest.raises(EtcFilesError, match="not a valid host name"):
        write_sandbox_files(str(tmp_path), hostname, None, None)
    assert list(tmp_path.iterdir()) == []


def test_console_receiver_keeps_the_first_descriptor_and_closes_the_rest() -> None:
    ours, theirs = socket.socketpair()
    first_r, first_w = os.pipe()
    extra_r, extra_w = os.pipe()
    try:
        socket.send_fds(theirs, [b"pty"], [first_r, extra_r])
        conn = _socket.socket(fileno=os.dup(ours.fileno()))
        try:
            received = containers._receive_fd(conn)
        finally:
            conn.close()
        assert received is not None
        assert not os.get_inheritable(received), "no child the agent spawns may get the pty"
        os.write(first_w, b"x")
        assert os.read(received, 1) == b"x", "the first descriptor is the first pipe's"
        os.close(received)
        # The extra copy was closed: with first_r's and extra_r's own copies gone too, the
        # second pipe has no reader left, and writing to it fails.
        os.close(extra_r)
        extra_r = -1
        with pytest.raises(BrokenPipeError):
            os.write(extra_w, b"x")
    finally:
        for fd in (first_r, first_w, extra_r, extra_w):
            if fd >= 0:
                os.close(fd)
        ours.close()
        theirs.close()


def test_console_receiver_reports_a_message_without_descriptors() -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"no pty")
        conn = _socket.socket(fileno=os.dup(ours.fileno()))
        try:
            assert containers._receive_fd(conn) is None
        finally:
            conn.close()
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    ("name", "container_id", "hostname"),
    [
        ("a", True, True),
        ("web-1.example", True, True),
        ("a_b", True, False),
        ("x" * 63, True, True),
        ("x" * 64, True, False),
        ("x" * 255, True, False),
        ("x" * 256, False, False),
        ("web.", True, False),
        (".web", False, False),
        ("wéb", False, False),
        ("web\n", False, False),
        ("", False, False),
    ],
)
def test_names_follow_the_documented_rules(name: str, container_id: bool, hostname: bool) -> None:
    assert names.valid_container_id(name) is container_id
    assert names.valid_hostname(name) is hostname
