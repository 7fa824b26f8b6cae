"""The guest protocol's messages: checked on every build and decode, and light enough to start fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import vmsandbox
from vmsandbox.guest import protocol
from vmsandbox.guest.protocol import (
    ATTACH_INPUT,
    REPLY,
    REQUEST,
    BlockDevice,
    ContainerInfo,
    ContainerList,
    CreateContainer,
    Exited,
    Failure,
    HostPath,
    Output,
    Pong,
    ProtocolError,
    Resize,
    SignalContainer,
    StdinData,
    decode,
)
from vmsandbox.guest.wire import Message

PACKAGE_PARENT = Path(vmsandbox.__file__).resolve().parent.parent
#: What the guest image's launcher imports before it serves the first request.
START_PATH = ("vmsandbox.guest.__main__", "vmsandbox.guest.mux")


#: Standard-library modules whose import is a visible share of the agent's start under emulation:
#: the start path loads them after it listens (logging, pathlib) or before the first container
#: (ctypes), and never the typing machinery; it reads and writes frames with the C socket type,
#: JSON codec and base64 (``_socket``, ``_json``, ``binascii``), so neither ``re`` nor ``enum``
#: comes with them.
KEPT_OFF_THE_START_PATH = (
    "pydantic",
    "pydantic_core",
    "typing",
    "dataclasses",
    "annotated_types",
    "logging",
    "pathlib",
    "ctypes",
    "argparse",
    "subprocess",
    "socket",
    "selectors",
    "signal",
    "json",
    "re",
    "enum",
    "base64",
)


#: What the first container's create loads on top of the start path: the agent's preload, the
#: sandbox's files and identity, and the runtime's children (spawned without ``subprocess``).
#: Under emulation each of these modules costs the first create a visible share; ctypes, which
#: the mounts need, loads after the preload.
CREATE_PATH = (
    "vmsandbox.guest.containers",
    "vmsandbox.guest.disks",
    "vmsandbox.guest.etcfiles",
    "vmsandbox.guest.identity",
    "vmsandbox.guest.ociruntime",
    "vmsandbox.guest.spawn",
)
KEPT_OFF_THE_CREATE_PATH = (*(m for m in KEPT_OFF_THE_START_PATH if m != "ctypes"), "locale", "warnings")


def _imported(modules: tuple[str, ...], watched: tuple[str, ...]) -> str:
    """Which of ``watched`` importing ``modules`` loads, run as the guest runs (isolated, no site)."""
    probe = (
        f"import sys; sys.path.insert(0, {str(PACKAGE_PARENT)!r}); "
        + "; ".join(f"import {module}" for module in modules)
        + f"; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {watched!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_guest_start_path_imports_only_the_standard_library() -> None:
    """No pydantic, not even typing, before the agent serves its first request."""
    imported = _imported(START_PATH, KEPT_OFF_THE_START_PATH)
    assert imported == "", f"the guest start path imported {imported}"


def test_first_create_loads_no_more_of_the_standard_library_than_it_needs() -> None:
    imported = _imported(START_PATH + CREATE_PATH, KEPT_OFF_THE_CREATE_PATH)
    assert imported == "", f"the first container's create imported {imported}"


def _messages() -> list[type[Message]]:
    return [
        value
        for value in vars(protocol).values()
        if isinstance(value, type) and issubclass(value, Message) and value is not Message
    ]


@pytest.mark.parametrize("cls", _messages(), ids=lambda c: c.__name__)
def test_every_declared_attribute_is_a_checked_field(cls: type[Message]) -> None:
    declared = set(cls.__annotations__) - {cls.TAG[0]}
    assert declared == set(cls.FIELDS), cls.__name__
    assert getattr(cls, cls.TAG[0]) == cls.TAG[1]


def test_every_message_is_in_exactly_one_union() -> None:
    members = [*REQUEST.members, *REPLY.members, *ATTACH_INPUT.members, HostPath, BlockDevice]
    assert sorted(m.__name__ for m in members) == sorted(c.__name__ for c in _messages())


def test_replies_round_trip_through_json() -> None:
    replies: list[Message] = [
        Pong(agent_pid=1, oci_runtime="runc", init_uptime=0.8, ready_uptime=1.25),
        ContainerList(
            containers=[ContainerInfo(container_id="c", status="stopped", exit_code=3, started_at=1)]
        ),
        Output.of("stderr", b"\x00\xffbytes", 42),
        Exited(exit_code=137),
        Failure(step="create", detail="no such image"),
    ]
    for reply in replies:
        assert decode(REPLY, reply.to_json().encode()) == reply
    listed = decode(REPLY, replies[1].to_json().encode())
    assert isinstance(listed.containers[0], ContainerInfo) and listed.containers[0].started_at == 1.0
    assert decode(REPLY, replies[2].to_json().encode()).raw() == b"\x00\xffbytes"
    assert decode(ATTACH_INPUT, StdinData.of(b"hi").to_json().encode()).raw() == b"hi"


def test_old_pong_without_uptimes_still_decodes() -> None:
    pong = decode(REPLY, b'{"type":"pong","version":1,"agent_pid":7,"oci_runtime":"crun"}')
    assert isinstance(pong, Pong) and pong.init_uptime is None and pong.ready_uptime is None


@pytest.mark.parametrize(
    ("frame", "named"),
    [
        ({"op": "signal", "container_id": "c", "signal": 0}, "SignalContainer.signal"),
        ({"op": "signal", "container_id": "c", "signal": True}, "SignalContainer.signal"),
        ({"op": "signal", "signal": 9}, "SignalContainer.container_id: required"),
        ({"op": "start", "container_id": 5}, "StartContainer.container_id: expected a string"),
        ({"op": "start", "container_id": "c", "extra": 1}, "StartContainer: unknown field 'extra'"),
        ({"op": "wait", "container_id": "c", "timeout": "soon"}, "WaitExit.timeout: expected a number"),
        (
            {"op": "create_container", "container_id": "c", "spec": {}, "rootfs": {"kind": "nfs"}},
            "CreateContainer.rootfs: unknown kind 'nfs'",
        ),
        (
            {"op": "create_container", "container_id": "c", "spec": [], "rootfs": {"kind": "host-path"}},
            "CreateContainer.spec: expected a JSON object",
        ),
        (
            {"op": "create_container", "container_id": "c", "spec": {}, "rootfs": {"kind": "host-path"}},
            "HostPath.path: required",
        ),
        ({"op": 3}, "unknown op 3"),
        (["op", "ping"], "frame: expected a JSON object"),
    ],
)
def test_bad_requests_name_the_message_and_field(frame: object, named: str) -> None:
    with pytest.raises(ProtocolError, match="malformed frame") as info:
        decode(REQUEST, json.dumps(frame).encode())
    assert named in str(info.value)


def test_bad_messages_are_refused_when_built_too() -> None:
    with pytest.raises(ProtocolError, match=r"Resize\.rows"):
        Resize(rows=70000, cols=80)
    with pytest.raises(ProtocolError, match=r"ContainerInfo\.status"):
        ContainerInfo(container_id="c", status="paused")
    with pytest.raises(ProtocolError, match=r"SignalContainer\.op: must be 'signal'"):
        SignalContainer(op="start", container_id="c", signal=9)


def test_nested_messages_are_accepted_as_objects_or_instances() -> None:
    built = CreateContainer(container_id="c", spec={"a": 1}, rootfs=BlockDevice(serial="s"))
    parsed = CreateContainer(container_id="c", spec={"a": 1}, rootfs={"kind": "block-device", "serial": "s"})
    assert built == parsed and isinstance(parsed.rootfs, BlockDevice) and parsed.terminal is False
    assert built != CreateContainer(container_id="c", spec={"a": 1}, rootfs=HostPath(path="/r"))
