"""JSON text for the wire, through CPython's C codec (``_json``) without the ``json`` package.

``json`` imports ``re`` (and with it ``enum`` and the regular-expression compiler) before the
first frame can be read: under emulation that is a visible share of the guest agent's start.
The C scanner and encoder that ``json`` itself uses need none of it, so the frames are read and
written with them directly; the output is byte for byte what ``json.dumps(obj,
separators=(",", ":"))`` writes, and any text ``json.loads`` accepts is read the same.
"""

from __future__ import annotations

import _json

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: JSON's insignificant whitespace, skipped around the one value of a text.
_WHITESPACE = " \t\n\r"


class JSONTextError(ValueError):
    """Text that is not one JSON value; the message says what and where, as ``json``'s does."""


class _ScanContext:
    """The settings the C scanner reads: ``json.loads``'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity and -Infinity, which float() reads as json does


def _unencodable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Made once, as json's default encoder and decoder are; both are safe to share across threads.
_encode = _json.make_encoder(
    {}, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
)
_scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # any object with these attributes


def dumps(value: object) -> str:
    """``value`` as compact JSON text (ASCII, ``,`` and ``:`` without spaces)."""
    return "".join(_encode(value, 0))


def loads(text: bytes | str) -> Any:
    """The one JSON value in ``text`` (UTF-8 when bytes); :class:`JSONTextError` (a ValueError) if none."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value, end = _scan(text, _skip_whitespace(text, 0))
    except StopIteration as stop:
        raise JSONTextError(f"Expecting value at char {stop.value}") from None
    if _skip_whitespace(text, end) != len(text):
        raise JSONTextError(f"Extra data at char {end}")
    return value


def _skip_whitespace(text: str, at: int) -> int:
    """The index of the first non-whitespace character from ``at``, without copying the frame."""
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at
