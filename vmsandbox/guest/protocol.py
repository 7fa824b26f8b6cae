"""The wire protocol between the host runtime and the guest agent; both ends import these classes.

One stream connection carries length-prefixed frames: a 4-byte big-endian length, then that many
bytes of UTF-8 JSON. The host sends a :data:`Request`; the agent answers with one :data:`Reply`,
except for :class:`Attach`, after which the agent streams :class:`Output` frames and ends with
:class:`Exited`, while the host may send :class:`StdinData`, :class:`StdinClose` and
:class:`Resize` on the same connection.

The guest agent imports this module on its start path, so it is standard library only: each
message lists its fields with a check (see :mod:`vmsandbox.guest.wire`), a message is checked
whenever it is built, and a frame decodes only into a valid message. There is no second
definition of these messages anywhere.
"""

from __future__ import annotations

import _socket
import binascii
import struct

from vmsandbox.guest import jsontext
from vmsandbox.guest.wire import (
    BOOL,
    MAC,
    NUMBER,
    OBJECT,
    STR,
    Message,
    ProtocolError,
    Variants,
    address,
    between,
    list_of,
    nested,
    one_of,
    optional,
    required,
)

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

    ContainerStatus = Literal["created", "running", "stopped"]

PROTOCOL_VERSION = 1
#: Frames larger than this are refused: a config.json or an output chunk is far smaller.
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


def _b64encode(raw: bytes) -> str:
    """Base64 through ``binascii``: the ``base64`` module imports ``re`` on the agent's start path."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


CONTAINER_STATUSES = ("created", "running", "stopped")
#: :class:`Failure` step of refusals caused by the container's status (start twice, signal a dead one).
WRONG_STATUS = "status"
_OPT_STR = optional(STR)
_OPT_INT = optional(between(-(2**63), 2**63 - 1))
_OPT_NUMBER = optional(NUMBER)


# ---- root filesystem sources -------------------------------------------------------------


class HostPath(Message):
    """The rootfs is a directory the agent can see as-is (the agent shares the host's fs).

    ``overlay``: the directory is an image's tree shared by other containers; the agent leaves
    it untouched and gives the container a writable overlay of its own on top.
    """

    kind: Literal["host-path"]
    path: str
    overlay: bool
    TAG = ("kind", "host-path")
    FIELDS = {"path": required(STR), "overlay": optional(BOOL, False, none=False)}


class BlockDevice(Message):
    """The rootfs is an ext4 disk attached to the VM, found by its virtio-blk serial.

    ``overlay``: the disk is shared read-only (one per image); the agent mounts it read-only
    and gives the container a private writable overlay on a tmpfs.
    """

    kind: Literal["block-device"]
    serial: str
    overlay: bool
    TAG = ("kind", "block-device")
    FIELDS = {"serial": required(STR), "overlay": optional(BOOL, False, none=False)}


RootfsSource = HostPath | BlockDevice
ROOTFS = Variants("kind", HostPath, BlockDevice)


# ---- requests ----------------------------------------------------------------------------


class Ping(Message):
    op: Literal["ping"]
    TAG = ("op", "ping")


class CreateSandbox(Message):
    """Make the VM this sandbox's: its hostname and, for a VM booted ahead (a pool member), a
    fresh identity, so no two claimed VMs share random state or a stale clock."""

    op: Literal["create_sandbox"]
    sandbox_id: str
    hostname: str | None
    #: The resolvers for the containers' /etc/resolv.conf (none: a sandbox without a network);
    #: None leaves each image's own file alone.
    dns: list[str] | None
    #: The sandbox's address, named with the hostname in the containers' /etc/hosts.
    ip: str | None
    #: Base64 random bytes from the host, mixed into the guest's pool and credited (VMs only).
    entropy: str | None
    #: The host's wall clock (seconds since the epoch) to set in the guest (VMs only).
    clock: float | None
    TAG = ("op", "create_sandbox")
    FIELDS = {
        "sandbox_id": required(STR),
        "hostname": _OPT_STR,
        "dns": optional(list_of(STR)),
        "ip": _OPT_STR,
        "entropy": _OPT_STR,
        "clock": _OPT_NUMBER,
    }


#: Longest wait for a hot-plugged NIC to show up in the guest (the guest's init waits 5 s at boot;
#: an emulated guest handling a PCIe hot-plug event on a busy host needs more).
MAX_NIC_WAIT = 120.0


def _nic_wait(value: object, where: str) -> object:
    seconds = NUMBER(value, where)
    assert isinstance(seconds, float)
    if not 0 < seconds <= MAX_NIC_WAIT:
        raise ProtocolError(f"{where}: expected seconds in (0, {MAX_NIC_WAIT:g}], got {seconds:g}")
    return seconds


class ConfigureNetwork(Message):
    """Give the NIC hot-plugged into a VM that booted without one (a pool member, a snapshot's
    copy) the sandbox's network, as the guest's init does at a cold boot from the kernel command
    line: wait for the interface with ``mac``, set its addresses, bring it up, route by default
    through the gateway(s), and write the VM's resolvers. Prefix bounds are the node's.
    """

    op: Literal["configure_network"]
    mac: str
    ip: str
    prefix_length: int
    gateway: str
    ip6: str | None
    prefix_length6: int
    gateway6: str | None
    dns: list[str]
    #: Seconds to wait for the interface to appear.
    timeout: float
    TAG = ("op", "configure_network")
    FIELDS = {
        "mac": required(MAC),
        "ip": required(address("ipv4")),
        "prefix_length": required(between(1, 30)),
        "gateway": required(address("ipv4")),
        "ip6": optional(address("ipv6")),
        "prefix_length6": optional(between(48, 120), 64, none=False),
        "gateway6": optional(address("ipv6")),
        "dns": optional(list_of(address("ip")), [], none=False),
        "timeout": optional(_nic_wait, 30.0, none=False),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if (self.ip6 is None) != (self.gateway6 is None):
            given, missing = ("ip6", "gateway6") if self.gateway6 is None else ("gateway6", "ip6")
            raise ProtocolError(f"ConfigureNetwork.{missing}: required with {given}")
        if self.ip == self.gateway:
            raise ProtocolError("ConfigureNetwork.gateway: must differ from ip")


class CreateContainer(Message):
    op: Literal["create_container"]
    container_id: str
    #: The bundle's config.json, as parsed JSON; the agent rewrites root.path for its own bundle.
    spec: dict[str, Any]
    rootfs: RootfsSource
    terminal: bool
    TAG = ("op", "create_container")
    FIELDS = {
        "container_id": required(STR),
        "spec": required(OBJECT),
        "rootfs": required(nested(ROOTFS)),
        "terminal": optional(BOOL, False),
    }


class StartContainer(Message):
    op: Literal["start"]
    container_id: str
    TAG = ("op", "start")
    FIELDS = {"container_id": required(STR)}


class GetState(Message):
    op: Literal["state"]
    container_id: str
    TAG = ("op", "state")
    FIELDS = {"container_id": required(STR)}


class SignalContainer(Message):
    op: Literal["signal"]
    container_id: str
    signal: int
    TAG = ("op", "signal")
    FIELDS = {"container_id": required(STR), "signal": required(between(1, 64))}


class WaitExit(Message):
    op: Literal["wait"]
    container_id: str
    timeout: float | None
    TAG = ("op", "wait")
    FIELDS = {"container_id": required(STR), "timeout": _OPT_NUMBER}


class Attach(Message):
    """Stream the container's output from byte ``offset`` of its capture, then its exit."""

    op: Literal["attach"]
    container_id: str
    offset: int
    TAG = ("op", "attach")
    FIELDS = {"container_id": required(STR), "offset": optional(between(0, 2**63 - 1), 0, none=False)}


class DestroyContainer(Message):
    op: Literal["destroy"]
    container_id: str
    TAG = ("op", "destroy")
    FIELDS = {"container_id": required(STR)}


class ListContainers(Message):
    op: Literal["list"]
    TAG = ("op", "list")


class Exec(Message):
    """Run a new process in a running container; the connection then carries stream chunks."""

    op: Literal["exec"]
    container_id: str
    command: list[str]
    stdin: bool
    tty: bool
    rows: int | None
    cols: int | None
    TAG = ("op", "exec")
    FIELDS = {
        "container_id": required(STR),
        "command": required(list_of(STR)),
        "stdin": optional(BOOL, False, none=False),
        "tty": optional(BOOL, False, none=False),
        "rows": optional(between(0, 65535)),
        "cols": optional(between(0, 65535)),
    }


class ReadPath(Message):
    """Stream a file's bytes, or a directory as a tar stream, from inside the container's root."""

    op: Literal["read_path"]
    container_id: str
    path: str
    TAG = ("op", "read_path")
    FIELDS = {"container_id": required(STR), "path": required(STR)}


class WritePath(Message):
    """Write a file (``kind`` file) or unpack a tar stream into a directory (``kind`` tar)."""

    op: Literal["write_path"]
    container_id: str
    path: str
    kind: Literal["file", "tar"]
    mode: int | None
    TAG = ("op", "write_path")
    FIELDS = {
        "container_id": required(STR),
        "path": required(STR),
        "kind": required(one_of("file", "tar")),
        "mode": optional(between(0, 0o7777)),
    }


class ListPath(Message):
    op: Literal["list_path"]
    container_id: str
    path: str
    TAG = ("op", "list_path")
    FIELDS = {"container_id": required(STR), "path": required(STR)}


Request = (
    Ping
    | CreateSandbox
    | ConfigureNetwork
    | CreateContainer
    | StartContainer
    | GetState
    | SignalContainer
    | WaitExit
    | Attach
    | DestroyContainer
    | ListContainers
    | Exec
    | ReadPath
    | WritePath
    | ListPath
)


# ---- stream frames sent by the host during attach ----------------------------------------


class StdinData(Message):
    op: Literal["stdin"]
    data: str  # base64
    TAG = ("op", "stdin")
    FIELDS = {"data": required(STR)}

    @classmethod
    def of(cls, raw: bytes) -> StdinData:
        return cls(data=_b64encode(raw))

    def raw(self) -> bytes:
        return binascii.a2b_base64(self.data)


class StdinClose(Message):
    op: Literal["stdin_close"]
    TAG = ("op", "stdin_close")


class Resize(Message):
    op: Literal["resize"]
    rows: int
    cols: int
    TAG = ("op", "resize")
    FIELDS = {"rows": required(between(0, 65535)), "cols": required(between(0, 65535))}


AttachInput = StdinData | StdinClose | Resize


# ---- replies -----------------------------------------------------------------------------


class Pong(Message):
    """The agent is serving; in a VM it also says when (guest uptime, seconds) init and it started."""

    type: Literal["pong"]
    version: int
    agent_pid: int
    oci_runtime: str
    #: Guest uptime when /init began: the kernel's share of the boot.
    init_uptime: float | None
    #: Guest uptime when the agent was listening, ready for its first request.
    ready_uptime: float | None
    TAG = ("type", "pong")
    FIELDS = {
        "version": optional(between(0, 2**31), PROTOCOL_VERSION, none=False),
        "agent_pid": required(between(0, 2**31)),
        "oci_runtime": required(STR),
        "init_uptime": _OPT_NUMBER,
        "ready_uptime": _OPT_NUMBER,
    }


class Ok(Message):
    type: Literal["ok"]
    TAG = ("type", "ok")


class ContainerInfo(Message):
    type: Literal["container"]
    container_id: str
    status: ContainerStatus
    #: The container's init pid as the guest sees it (never a host pid).
    guest_pid: int | None
    exit_code: int | None
    started_at: float | None
    finished_at: float | None
    TAG = ("type", "container")
    FIELDS = {
        "container_id": required(STR),
        "status": required(one_of(*CONTAINER_STATUSES)),
        "guest_pid": _OPT_INT,
        "exit_code": _OPT_INT,
        "started_at": _OPT_NUMBER,
        "finished_at": _OPT_NUMBER,
    }


class ContainerList(Message):
    type: Literal["containers"]
    containers: list[ContainerInfo]
    TAG = ("type", "containers")
    FIELDS = {"containers": required(list_of(nested(Variants("type", ContainerInfo))))}


class Attached(Message):
    type: Literal["attached"]
    TAG = ("type", "attached")


class Output(Message):
    type: Literal["output"]
    stream: Literal["stdout", "stderr"]
    data: str  # base64
    offset: int
    TAG = ("type", "output")
    FIELDS = {
        "stream": required(one_of("stdout", "stderr")),
        "data": required(STR),
        "offset": required(between(0, 2**63 - 1)),
    }

    @classmethod
    def of(cls, stream: Literal["stdout", "stderr"], raw: bytes, offset: int) -> Output:
        return cls(stream=stream, data=_b64encode(raw), offset=offset)

    def raw(self) -> bytes:
        return binascii.a2b_base64(self.data)


class Exited(Message):
    type: Literal["exited"]
    #: The exit status, or 128 + signal number when a signal ended the process.
    exit_code: int
    TAG = ("type", "exited")
    FIELDS = {"exit_code": required(between(-(2**31), 2**31))}


class Failure(Message):
    """The request failed; ``step`` and ``detail`` become a typed error on the host."""

    type: Literal["error"]
    step: str
    detail: str
    TAG = ("type", "error")
    FIELDS = {"step": required(STR), "detail": required(STR)}


class Streaming(Message):
    """A stream request was accepted: from here on the connection carries chunks (guest/streams.py).

    ``kind`` says what the chunks hold: an exec's output, a file's bytes, a directory's tar
    stream, or (``write``) that the agent now takes the host's data.
    """

    type: Literal["streaming"]
    kind: Literal["exec", "file", "dir", "write"]
    size: int | None
    TAG = ("type", "streaming")
    FIELDS = {"kind": required(one_of("exec", "file", "dir", "write")), "size": _OPT_INT}


class PathEntry(Message):
    type: Literal["entry"]
    name: str
    kind: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: float
    #: A symlink's target, as stored (it is resolved inside the container's root when used).
    target: str | None
    TAG = ("type", "entry")
    FIELDS = {
        "name": required(STR),
        "kind": required(one_of("file", "dir", "symlink", "other")),
        "size": required(between(0, 2**63 - 1)),
        "mode": required(between(0, 0o177777)),
        "mtime": required(NUMBER),
        "target": _OPT_STR,
    }


class PathList(Message):
    type: Literal["entries"]
    entries: list[PathEntry]
    TAG = ("type", "entries")
    FIELDS = {"entries": required(list_of(nested(Variants("type", PathEntry))))}


Reply = (
    Pong
    | Ok
    | ContainerInfo
    | ContainerList
    | Attached
    | Output
    | Exited
    | Failure
    | Streaming
    | PathEntry
    | PathList
)

REQUEST = Variants(
    "op",
    Ping,
    CreateSandbox,
    ConfigureNetwork,
    CreateContainer,
    StartContainer,
    GetState,
    SignalContainer,
    WaitExit,
    Attach,
    DestroyContainer,
    ListContainers,
    Exec,
    ReadPath,
    WritePath,
    ListPath,
)
REPLY = Variants(
    "type",
    Pong,
    Ok,
    ContainerInfo,
    ContainerList,
    Attached,
    Output,
    Exited,
    Failure,
    Streaming,
    PathEntry,
    PathList,
)
ATTACH_INPUT = Variants("op", StdinData, StdinClose, Resize)


# ---- framing -----------------------------------------------------------------------------


def _recv_exact(sock: _socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError(f"connection closed inside a frame ({len(buf)} of {n} bytes)")
            return None
        buf += chunk
    return bytes(buf)


def send_frame(sock: _socket.socket, message: Message) -> None:
    """Write one frame holding ``message`` as JSON."""
    body = message.to_json().encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    sock.sendall(_HEADER.pack(len(body)) + body)


def recv_frame_bytes(sock: _socket.socket) -> bytes | None:
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


def decode(variants: Variants, body: bytes) -> Any:
    """Parse a frame body as one of ``variants``, turning any mismatch into a :class:`ProtocolError`."""
    try:
        return variants.parse(jsontext.loads(body))
    except (ValueError, ProtocolError) as exc:
        preview = body[:200].decode(errors="replace")
        raise ProtocolError(f"malformed frame {preview!r}: {exc}") from exc


def recv_reply(sock: _socket.socket) -> Reply:
    body = recv_frame_bytes(sock)
    if body is None:
        raise ProtocolError("the guest agent closed the connection without replying")
    reply: Reply = decode(REPLY, body)
    return reply
