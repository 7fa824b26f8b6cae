"""The guest's JSON text (``_json`` without the ``json`` package) reads and writes as ``json`` does."""

from __future__ import annotations

import json

import pytest

from vmsandbox.guest import jsontext

VALUES: list[object] = [
    {},
    [],
    "",
    0,
    -1,
    2**70,
    1.5,
    -0.0,
    1e300,
    True,
    None,
    "plain",
    "é ü 漢字 \U0001f600",
    'quote " backslash \\ slash / controls \n\t\r\x00\x1f',
    {"op": "create", "config": {"root": {"path": "rootfs"}, "args": ["/bin/sh", "-c", "echo hi"]}},
    {"nested": [[[{"k": [1, {"z": None}]}]]], "empty": {"a": [], "b": {}}},
    {"b": 1, "a": 2},  # key order kept, not sorted
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_writes_what_json_writes_and_reads_it_back(value: object) -> None:
    text = jsontext.dumps(value)
    assert text == json.dumps(value, separators=(",", ":"))
    assert text.isascii()
    assert jsontext.loads(text.encode()) == value
    assert jsontext.loads(text) == value


def test_non_finite_floats_round_trip_as_json_spells_them() -> None:
    text = jsontext.dumps([float("inf"), float("-inf"), float("nan")])
    assert text == "[Infinity,-Infinity,NaN]"
    inf, neg, nan = jsontext.loads(text)
    assert inf == float("inf") and neg == float("-inf") and nan != nan


@pytest.mark.parametrize("text", [' \n\t{"a": [1, 2.5, "x"]}\r\n ', "[1 , 2]", '"\\u00e9\\n"', "  null"])
def test_reads_what_json_reads(text: str) -> None:
    assert jsontext.loads(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "{", "[1,]", "1 2", '{"a" 1}', '"\\x"', '{"a":1}}', "nul", "[1]x", '"\x01"', "'a'"],
)
def test_refuses_what_json_refuses_with_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsontext.loads(text)


def test_bytes_that_are_not_utf8_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        jsontext.loads(b'"\xff"')


def test_an_unencodable_value_is_a_type_error_naming_its_type() -> None:
    with pytest.raises(TypeError, match="bytes"):
        jsontext.dumps({"data": b"raw"})
