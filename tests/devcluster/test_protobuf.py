"""The front's decoder for protobuf Namespace bodies (what ``kubectl create namespace`` sends)."""

from __future__ import annotations

import pytest

from vmsandbox.devcluster.protobuf import MAGIC, ProtobufError, decode_namespace


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _len(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _envelope(namespace: bytes, api_version: str = "v1", kind: str = "Namespace") -> bytes:
    type_meta = _len(1, api_version.encode()) + _len(2, kind.encode())
    return MAGIC + _len(1, type_meta) + _len(2, namespace) + _len(3, b"") + _len(4, b"")


def _meta(*fields: bytes) -> bytes:
    # Zero values of fields the decoder does not model, as generated Go code always writes them.
    zeros = _len(4, b"") + _len(5, b"") + _len(6, b"") + _int(7, 0) + _len(8, b"")
    return _len(1, b"".join(fields) + zeros)


def test_decodes_name_labels_annotations_and_finalizers() -> None:
    meta = _meta(
        _len(1, b"team-a"),
        _len(11, _len(1, b"env") + _len(2, b"dev")),
        _len(11, _len(1, b"tier") + _len(2, b"1")),
        _len(12, _len(1, b"note") + _len(2, b"x")),
        _len(14, b"example.com/keep"),
    )
    body = decode_namespace(_envelope(meta + _len(2, b"") + _len(3, b"")))
    assert body == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "team-a",
            "labels": {"env": "dev", "tier": "1"},
            "annotations": {"note": "x"},
            "finalizers": ["example.com/keep"],
        },
        "spec": {},
        "status": {},
    }


def test_refuses_fields_it_would_otherwise_drop() -> None:
    owner = _len(13, _len(1, b"v1") + _len(2, b"Node"))  # ownerReferences
    with pytest.raises(ProtobufError, match="metadata field 13"):
        decode_namespace(_envelope(_meta(_len(1, b"a"), owner)))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"kind": "Namespace"}', "magic"),
        (_envelope(_meta(_len(1, b"a")), kind="Node"), "expected a v1 Namespace"),
        (MAGIC + b"\x0a\xff", "truncated"),
    ],
)
def test_rejects_other_bodies(body: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        decode_namespace(body)
