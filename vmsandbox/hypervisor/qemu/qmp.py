"""A small QMP (QEMU Machine Protocol) client over QEMU's unix socket.

QMP is newline-delimited JSON: a greeting, then ``qmp_capabilities`` to leave negotiation mode,
then commands answered by ``{"return": ...}`` or ``{"error": {"class", "desc"}}``, with
asynchronous ``{"event": ...}`` messages interleaved (skipped here; replies are matched by id).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vmsandbox.hypervisor.base import HypervisorError


class QMPError(HypervisorError):
    """QEMU's control socket could not be reached or refused a command."""

    step = "qmp"


class QMPErrorBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    error_class: str = Field(alias="class")
    desc: str


class QMPMessage(BaseModel):
    """Any message QEMU sends: a greeting, a reply, an error or an event."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    qmp: dict[str, Any] | None = Field(default=None, alias="QMP")
    return_: Any = Field(default=None, alias="return")
    error: QMPErrorBody | None = None
    event: str | None = None
    id: int | None = None


class QMPClient:
    """One negotiated QMP session (QEMU serves one client per socket at a time)."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self._path = path
        self._buffer = b""
        self._ids = itertools.count(1)
        self.greeting = self._read_message()
        if self.greeting.qmp is None:
            raise QMPError(f"{path} did not greet like a QMP server")
        self.execute("qmp_capabilities")

    @classmethod
    def connect(cls, path: Path, timeout: float = 5.0) -> QMPClient:
        """Connect, retrying until the socket exists and accepts, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                sock.connect(str(path))
                sock.settimeout(timeout)
                return cls(sock, path)
            except (OSError, QMPError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise QMPError(f"cannot talk to QMP at {path}: {exc}") from exc
                time.sleep(0.01)

    def _read_message(self) -> QMPMessage:
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise QMPError(f"reading from {self._path}: {exc}") from exc
            if not chunk:
                raise QMPError(f"QEMU closed its QMP socket {self._path}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return QMPMessage.model_validate(json.loads(line))
        except (ValueError, ValidationError) as exc:
            raise QMPError(f"unreadable QMP message {line[:200]!r}: {exc}") from exc

    def execute(self, command: str, arguments: dict[str, Any] | None = None, fd: int | None = None) -> Any:
        """Run one command and return its ``return`` value; raises :class:`QMPError` on error.

        ``fd`` travels with the command as SCM_RIGHTS (``getfd`` names it for later commands).
        """
        request_id = next(self._ids)
        request: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        try:
            if fd is None:
                self._sock.sendall(data)
            else:
                socket.send_fds(self._sock, [data], [fd])
        except OSError as exc:
            raise QMPError(f"sending {command} to {self._path}: {exc}") from exc
        while True:
            message = self._read_message()
            if message.event is not None or message.id != request_id:
                continue
            if message.error is not None:
                raise QMPError(f"{command} failed: {message.error.error_class}: {message.error.desc}")
            return message.return_

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def has_device(qmp: QMPClient, qdev_id: str) -> bool:
    """Whether the device still exists. A device leaves the PCI bus first and is finalized (its
    drive or netdev released) only after that, when it leaves ``/machine/peripheral``: this
    waits for that."""
    children = qmp.execute("qom-list", {"path": "/machine/peripheral"})
    return any(child.get("name") == qdev_id for child in children)


def remove_device(qmp: QMPClient, qdev_id: str, timeout: float, what: str, step: str) -> None:
    """``device_del``, then wait until the guest has released the device; idempotent.

    ``device_del`` only asks the guest (ACPI eject on q35's root ports); the device, its port and
    its backend stay taken until the guest has answered and QEMU has finalized the device.
    """
    if not has_device(qmp, qdev_id):
        return
    with contextlib.suppress(QMPError):  # already being removed: wait for it below
        qmp.execute("device_del", {"id": qdev_id})
    deadline = time.monotonic() + timeout
    while has_device(qmp, qdev_id):
        if time.monotonic() >= deadline:
            raise HypervisorError(f"the guest did not release {what} within {timeout:.0f}s", step=step)
        time.sleep(0.05)
