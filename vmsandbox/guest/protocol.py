"""The wire protocol between the host runtime and the guest agent; both ends import these models.

One stream connection carries length-prefixed frames: a 4-byte big-endian length, then that many
bytes of UTF-8 JSON. The host sends a :data:`Request`; the agent answers with one :data:`Reply`,
except for :class:`Attach`, after which the agent streams :class:`Output` frames and ends with
:class:`Exited`, while the host may send :class:`StdinData`, :class:`StdinClose` and
:class:`Resize` on the same connection.
"""

from __future__ import annotations

import base64
import socket
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from vmsandbox.errors import VMSandboxError

PROTOCOL_VERSION = 1
#: Frames larger than this are refused: a config.json or an output chunk is far smaller.
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")

ContainerStatus = Literal["created", "running", "stopped"]
#: :class:`Failure` step of refusals caused by the container's status (start twice, signal a dead one).
WRONG_STATUS = "status"


class ProtocolError(VMSandboxError):
    """A frame could not be read, decoded or was not the expected kind."""

    step = "guest protocol"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- root filesystem sources -------------------------------------------------------------


class HostPath(_Msg):
    """The rootfs is a directory the agent can see as-is (the agent shares the host's fs)."""

    kind: Literal["host-path"] = "host-path"
    path: str


class BlockDevice(_Msg):
    """The rootfs is an ext4 disk attached to the VM, found by its virtio-blk serial."""

    kind: Literal["block-device"] = "block-device"
    serial: str


RootfsSource = Annotated[HostPath | BlockDevice, Field(discriminator="kind")]


# ---- requests ----------------------------------------------------------------------------


class Ping(_Msg):
    op: Literal["ping"] = "ping"


class CreateSandbox(_Msg):
    op: Literal["create_sandbox"] = "create_sandbox"
    sandbox_id: str
    hostname: str | None = None


class CreateContainer(_Msg):
    op: Literal["create_container"] = "create_container"
    container_id: str
    #: The bundle's config.json, as parsed JSON; the agent rewrites root.path for its own bundle.
    spec: dict[str, Any]
    rootfs: RootfsSource
    terminal: bool = False


class StartContainer(_Msg):
    op: Literal["start"] = "start"
    container_id: str


class GetState(_Msg):
    op: Literal["state"] = "state"
    container_id: str


class SignalContainer(_Msg):
    op: Literal["signal"] = "signal"
    container_id: str
    signal: int = Field(ge=1, le=64)


class WaitExit(_Msg):
    op: Literal["wait"] = "wait"
    container_id: str
    timeout: float | None = None


class Attach(_Msg):
    """Stream the container's output from byte ``offset`` of its capture, then its exit."""

    op: Literal["attach"] = "attach"
    container_id: str
    offset: int = 0


class DestroyContainer(_Msg):
    op: Literal["destroy"] = "destroy"
    container_id: str


class ListContainers(_Msg):
    op: Literal["list"] = "list"


Request = Annotated[
    Ping
    | CreateSandbox
    | CreateContainer
    | StartContainer
    | GetState
    | SignalContainer
    | WaitExit
    | Attach
    | DestroyContainer
    | ListContainers,
    Field(discriminator="op"),
]


# ---- stream frames sent by the host during attach ----------------------------------------


class StdinData(_Msg):
    op: Literal["stdin"] = "stdin"
    data: str  # base64

    @classmethod
    def of(cls, raw: bytes) -> StdinData:
        return cls(data=base64.b64encode(raw).decode())

    def raw(self) -> bytes:
        return base64.b64decode(self.data)


class StdinClose(_Msg):
    op: Literal["stdin_close"] = "stdin_close"


class Resize(_Msg):
    op: Literal["resize"] = "resize"
    rows: int = Field(ge=0, le=65535)
    cols: int = Field(ge=0, le=65535)


AttachInput = Annotated[StdinData | StdinClose | Resize, Field(discriminator="op")]


# ---- replies -----------------------------------------------------------------------------


class Pong(_Msg):
    type: Literal["pong"] = "pong"
    version: int = PROTOCOL_VERSION
    agent_pid: int
    oci_runtime: str


class Ok(_Msg):
    type: Literal["ok"] = "ok"


class ContainerInfo(_Msg):
    type: Literal["container"] = "container"
    container_id: str
    status: ContainerStatus
    #: The container's init pid as the guest sees it (never a host pid).
    guest_pid: int | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None


class ContainerList(_Msg):
    type: Literal["containers"] = "containers"
    containers: list[ContainerInfo]


class Attached(_Msg):
    type: Literal["attached"] = "attached"


class Output(_Msg):
    type: Literal["output"] = "output"
    stream: Literal["stdout", "stderr"]
    data: str  # base64
    offset: int

    @classmethod
    def of(cls, stream: Literal["stdout", "stderr"], raw: bytes, offset: int) -> Output:
        return cls(stream=stream, data=base64.b64encode(raw).decode(), offset=offset)

    def raw(self) -> bytes:
        return base64.b64decode(self.data)


class Exited(_Msg):
    type: Literal["exited"] = "exited"
    #: The exit status, or 128 + signal number when a signal ended the process.
    exit_code: int


class Failure(_Msg):
    """The request failed; ``step`` and ``detail`` become a typed error on the host."""

    type: Literal["error"] = "error"
    step: str
    detail: str


Reply = Annotated[
    Pong | Ok | ContainerInfo | ContainerList | Attached | Output | Exited | Failure,
    Field(discriminator="type"),
]

REQUEST: TypeAdapter[Request] = TypeAdapter(Request)
REPLY: TypeAdapter[Reply] = TypeAdapter(Reply)
ATTACH_INPUT: TypeAdapter[AttachInput] = TypeAdapter(AttachInput)


# ---- framing -----------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError(f"connection closed inside a frame ({len(buf)} of {n} bytes)")
            return None
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, message: BaseModel) -> None:
    """Write one frame holding ``message`` as JSON."""
    body = message.model_dump_json().encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    sock.sendall(_HEADER.pack(len(body)) + body)


def recv_frame_bytes(sock: socket.socket) -> bytes | None:
    """The next frame's JSON body, or None when the peer closed the connection cleanly."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"peer announced a {length}-byte frame; the limit is {MAX_FRAME}")
    body = _recv_exact(sock, length)
    if body is None:
        raise ProtocolError("connection closed after a frame header")
    return body


def decode(adapter: TypeAdapter[Any], body: bytes) -> Any:
    """Parse a frame body with ``adapter``, turning any mismatch into a :class:`ProtocolError`."""
    try:
        return adapter.validate_json(body)
    except ValueError as exc:
        preview = body[:200].decode(errors="replace")
        raise ProtocolError(f"malformed frame {preview!r}: {exc}") from exc


def recv_reply(sock: socket.socket) -> Reply:
    body = recv_frame_bytes(sock)
    if body is None:
        raise ProtocolError("the guest agent closed the connection without replying")
    reply: Reply = decode(REPLY, body)
    return reply
