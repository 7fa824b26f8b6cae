"""The QMP commands of a NIC hot-plug and unplug, against a QMP server that records them.

The order matters: the tap's descriptor first (``getfd``, with SCM_RIGHTS), the netdev on it,
then the device; a refusal removes what was added before it, and the descriptor. Real QEMU runs
the same sequence in tests/qemu/test_nic_hotplug.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.qemu import nic
from vmsandbox.hypervisor.qemu.qmp import QMPClient, QMPError


class FakeQMP:
    """Answers every command with ``{"return": ...}``, or an error for those in ``refuse``;
    records ``(command, arguments, descriptors received)``."""

    def __init__(self, path: Path, refuse: set[str], peripherals: list[list[str]]) -> None:
        self.calls: list[tuple[str, dict[str, Any], int]] = []
        self.refuse = refuse
        #: What successive ``qom-list`` calls answer (the last one repeats).
        self.peripherals = peripherals
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            buffer = b""
            while True:
                data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
                for fd in fds:
                    os.close(fd)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    conn.sendall(self._answer(json.loads(line), len(fds)) + b"\n")
                    fds = []

    def _answer(self, request: dict[str, Any], fds: int) -> bytes:
        command, arguments = request["execute"], request.get("arguments", {})
        if command != "qmp_capabilities":
            self.calls.append((command, arguments, fds))
        if command in self.refuse:
            error = {"class": "GenericError", "desc": f"{command} refused"}
            return json.dumps({"error": error, "id": request["id"]}).encode()
        result: Any = {}
        if command == "qom-list":
            names = self.peripherals.pop(0) if len(self.peripherals) > 1 else self.peripherals[0]
            result = [{"name": name, "type": "child<virtio-net-pci>"} for name in names]
        return json.dumps({"return": result, "id": request["id"]}).encode()

    def commands(self) -> list[str]:
        return [call[0] for call in self.calls]


@pytest.fixture
def qmp_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[FakeQMP] = []

    def start(
        refuse: frozenset[str] = frozenset(), peripherals: list[list[str]] | None = None
    ) -> tuple[FakeQMP, QMPClient]:
        path = tmp_path / f"qmp{len(servers)}.sock"
        server = FakeQMP(path, set(refuse), peripherals or [[]])
        servers.append(server)
        return server, QMPClient.connect(path)

    yield start
    for server in servers:
        server.listener.close()


def _tap_fd() -> int:
    read, write = os.pipe()
    os.close(write)
    return read


def test_plug_hands_the_descriptor_over_then_adds_the_netdev_and_the_device(qmp_server: Any) -> None:
    server, qmp = qmp_server()
    fd = _tap_fd()
    try:
        with qmp:
            nic.plug(qmp, fd, "02:76:73:fa:07:09", "hp3")
    finally:
        os.close(fd)
    assert server.calls == [
        ("getfd", {"fdname": nic.FD_NAME}, 1),
        ("netdev_add", {"type": "tap", "id": nic.NETDEV_ID, "fd": nic.FD_NAME}, 0),
        (
            "device_add",
            {
                "driver": "virtio-net-pci",
                "netdev": nic.NETDEV_ID,
                "mac": "02:76:73:fa:07:09",
                "id": nic.NIC_ID,
                "bus": "hp3",
            },
            0,
        ),
    ]


@pytest.mark.parametrize(
    ("refused", "sequence"),
    [
        ("getfd", ["getfd"]),
        ("netdev_add", ["getfd", "netdev_add", "closefd"]),
        ("device_add", ["getfd", "netdev_add", "device_add", "netdev_del"]),
    ],
)
def test_a_refused_step_removes_what_came_before_it(
    qmp_server: Any, refused: str, sequence: list[str]
) -> None:
    server, qmp = qmp_server(refuse={refused})
    fd = _tap_fd()
    try:
        with qmp, pytest.raises(QMPError, match=f"{refused} refused"):
            nic.plug(qmp, fd, "02:76:73:fa:07:09", "hp0")
    finally:
        os.close(fd)
    assert server.commands() == sequence


def test_unplug_waits_for_the_guest_then_removes_the_netdev_and_the_descriptor(qmp_server: Any) -> None:
    present = [nic.NIC_ID, "blk-vmsb-root"]
    server, qmp = qmp_server(peripherals=[present, present, present, ["blk-vmsb-root"]])
    with qmp:
        nic.unplug(qmp, timeout=10)
    commands = server.commands()
    assert commands[:2] == ["qom-list", "device_del"]
    assert server.calls[1][1] == {"id": nic.NIC_ID}
    assert commands[-2:] == ["netdev_del", "closefd"]
    assert commands.count("qom-list") == 4, "it waited until the device left /machine/peripheral"


def test_unplug_without_a_nic_is_a_no_op_that_still_clears_the_netdev(qmp_server: Any) -> None:
    server, qmp = qmp_server(refuse={"netdev_del", "closefd"})
    with qmp:
        nic.unplug(qmp, timeout=10)  # nothing there: the refusals are not errors
    assert server.commands() == ["qom-list", "netdev_del", "closefd"]


def test_a_guest_that_never_releases_the_nic_is_an_error_naming_the_wait(qmp_server: Any) -> None:
    _, qmp = qmp_server(peripherals=[[nic.NIC_ID]])
    with qmp, pytest.raises(HypervisorError, match="did not release its NIC within"):
        nic.unplug(qmp, timeout=0.2)
