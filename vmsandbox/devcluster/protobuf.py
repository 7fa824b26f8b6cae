"""Decoding the one protobuf request body clients send for an emulated kind: a Namespace.

kubectl's typed commands (``kubectl create namespace``) encode built-in kinds as Kubernetes
protobuf: the magic ``k8s\\0`` and a ``runtime.Unknown`` envelope (typeMeta, raw) whose raw
bytes are the generated ``v1.Namespace`` message. CRD storage only reads JSON, so the front
turns such a body into JSON. Only the fields a create sets are known here (ObjectMeta name,
generateName, namespace, labels, annotations, finalizers; spec.finalizers; status.phase); a
body setting any other field to a non-zero value is refused rather than silently trimmed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MAGIC = b"k8s\x00"
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """The body is not a protobuf message this decoder understands (names the field)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of a message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ProtobufError(f"field {number}: truncated")
            yield number, wire, buf[pos : pos + size]
            pos += size
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            yield number, wire, buf[pos : pos + width]
            pos += width
        else:
            raise ProtobufError(f"field {number}: unsupported wire type {wire}")


def _text(value: int | bytes, where: str) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError(f"{where}: expected a string")
    return value.decode()


def _map_entry(value: int | bytes, where: str) -> tuple[str, str]:
    if not isinstance(value, bytes):
        raise ProtobufError(f"{where}: expected a map entry")
    entry = {n: _text(v, where) for n, _, v in _fields(value)}
    return entry.get(1, ""), entry.get(2, "")


_META_STRINGS = {1: "name", 2: "generateName", 3: "namespace"}
_META_MAPS = {11: "labels", 12: "annotations"}


def _object_meta(buf: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for number, _, value in _fields(buf):
        if number in _META_STRINGS:
            meta[_META_STRINGS[number]] = _text(value, f"metadata.{_META_STRINGS[number]}")
        elif number in _META_MAPS:
            key, item = _map_entry(value, f"metadata.{_META_MAPS[number]}")
            meta.setdefault(_META_MAPS[number], {})[key] = item
        elif number == 14:
            meta.setdefault("finalizers", []).append(_text(value, "metadata.finalizers"))
        elif value in (0, b""):
            continue  # generated Go code writes every non-pointer field, zero values included
        else:
            raise ProtobufError(f"metadata field {number} is not supported in protobuf bodies")
    return meta


def _namespace(buf: bytes) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace"}
    for number, _, value in _fields(buf):
        if not isinstance(value, bytes):
            raise ProtobufError(f"Namespace field {number}: expected a message")
        if number == 1:
            body["metadata"] = _object_meta(value)
        elif number == 2:
            finalizers = [_text(v, "spec.finalizers") for n, _, v in _fields(value) if n == 1]
            body["spec"] = {"finalizers": finalizers} if finalizers else {}
        elif number == 3:
            status = {n: v for n, _, v in _fields(value)}
            phase = _text(status[1], "status.phase") if 1 in status else ""
            body["status"] = {"phase": phase} if phase else {}
        elif value == b"":
            continue
        else:
            raise ProtobufError(f"Namespace field {number} is not supported in protobuf bodies")
    return body


def decode_namespace(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded ``v1`` Namespace request body."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    type_meta: dict[int, str] = {}
    raw = b""
    for number, _, value in _fields(body[len(MAGIC) :]):
        if number == 1 and isinstance(value, bytes):
            type_meta = {n: _text(v, "typeMeta") for n, _, v in _fields(value)}
        elif number == 2 and isinstance(value, bytes):
            raw = value
        elif number == 3 and value:
            raise ProtobufError("compressed protobuf bodies are not supported")
    if (type_meta.get(1), type_meta.get(2)) != ("v1", "Namespace"):
        raise ProtobufError(f"expected a v1 Namespace, got {type_meta.get(1)} {type_meta.get(2)}")
    return _namespace(raw)
