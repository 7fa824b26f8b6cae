"""Checked wire messages in the standard library alone, for the guest agent's start path.

The agent must answer its first request as soon as possible after the guest's init starts it,
so nothing it imports on the way may be a third-party validation library. A :class:`Message`
subclass lists its fields in ``FIELDS`` (name -> :class:`Field`: a check and a default), and its
tag (``op`` or ``type`` and the value naming the message) in ``TAG``. Building a message runs
every check, so a message held in memory, sent or decoded, is always valid; an error names the
message and the field.
"""

from __future__ import annotations

import _socket
from collections.abc import Callable

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest import jsontext

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

#: Checks one value (``where`` names it in errors) and returns it, normalised.
Check = Callable[[object, str], object]
_REQUIRED = object()


class ProtocolError(VMSandboxError):
    """A frame could not be read, decoded or was not the expected kind."""

    step = "guest protocol"


class Field:
    """One field: its check, and its default (absent: the field is required)."""

    __slots__ = ("check", "default")

    def __init__(self, check: Check, default: object = _REQUIRED) -> None:
        self.check = check
        self.default = default


def required(check: Check) -> Field:
    return Field(check)


def optional(check: Check, default: object = None, *, none: bool = True) -> Field:
    """A field with a default; it also takes null unless ``none`` is False."""
    return Field(_or_none(check) if none else check, default)


def _or_none(check: Check) -> Check:
    def _check(value: object, where: str) -> object:
        return None if value is None else check(value, where)

    return _check


def _fail(where: str, expected: str, value: object) -> ProtocolError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ProtocolError(f"{where}: expected {expected}, got {shown}")


def STR(value: object, where: str) -> object:
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    return value


def BOOL(value: object, where: str) -> object:
    if not isinstance(value, bool):
        raise _fail(where, "true or false", value)
    return value


def NUMBER(value: object, where: str) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, "a number", value)
    return float(value)


def OBJECT(value: object, where: str) -> object:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise _fail(where, "a JSON object", value)
    return value


def between(low: int, high: int) -> Check:
    """An integer in ``[low, high]``."""

    def _check(value: object, where: str) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(where, f"an integer from {low} to {high}", value)
        return value

    return _check


def one_of(*choices: str) -> Check:
    def _check(value: object, where: str) -> object:
        if value not in choices:
            raise _fail(where, " or ".join(repr(c) for c in choices), value)
        return value

    return _check


def address(family: str) -> Check:
    """An IP address of ``family`` (``"ipv4"``, ``"ipv6"`` or ``"ip"`` for either), normalised.

    Parsed by the C library (``inet_pton``), which costs the agent's start path no import.
    """
    families = {
        "ipv4": (_socket.AF_INET,),
        "ipv6": (_socket.AF_INET6,),
        "ip": (_socket.AF_INET, _socket.AF_INET6),
    }
    wanted = families[family]
    expected = {"ipv4": "an IPv4 address", "ipv6": "an IPv6 address", "ip": "an IP address"}[family]

    def _check(value: object, where: str) -> object:
        if isinstance(value, str):
            for af in wanted:
                try:
                    return _socket.inet_ntop(af, _socket.inet_pton(af, value))
                except OSError:
                    continue
        raise _fail(where, expected, value)

    return _check


_HEX = frozenset("0123456789abcdef")


def MAC(value: object, where: str) -> object:
    """A unicast MAC address in lower-case colon form (``02:76:73:0a:0b:0c``)."""
    octets = value.split(":") if isinstance(value, str) else []
    if len(octets) != 6 or any(len(o) != 2 or not set(o) <= _HEX for o in octets):
        raise _fail(where, "a MAC address like 02:00:00:00:00:01 (lower case)", value)
    if int(octets[0], 16) & 1:
        raise _fail(where, "a unicast MAC address (multicast bit clear)", value)
    return value


def list_of(item: Check) -> Check:
    def _check(value: object, where: str) -> object:
        if not isinstance(value, list):
            raise _fail(where, "a list", value)
        return [item(element, f"{where}[{i}]") for i, element in enumerate(value)]

    return _check


def nested(variants: Variants) -> Check:
    """A message of one of ``variants``, given as one or as its JSON object."""

    def _check(value: object, where: str) -> object:
        if isinstance(value, variants.members):
            return value
        return variants.parse(value, where)

    return _check


class Message:
    """A message: ``TAG`` names it on the wire, ``FIELDS`` are checked whenever one is built."""

    TAG: ClassVar[tuple[str, str]]
    FIELDS: ClassVar[dict[str, Field]] = {}

    def __init__(self, **values: Any) -> None:
        name = type(self).__name__
        tag_field, tag = self.TAG
        if values.pop(tag_field, tag) != tag:
            raise ProtocolError(f"{name}.{tag_field}: must be {tag!r}")
        unknown = sorted(values.keys() - self.FIELDS.keys())
        if unknown:
            raise ProtocolError(f"{name}: unknown field {unknown[0]!r}")
        for field, spec in self.FIELDS.items():
            if field in values:
                value = spec.check(values[field], f"{name}.{field}")
            elif spec.default is _REQUIRED:
                raise ProtocolError(f"{name}.{field}: required")
            else:
                value = spec.default
            setattr(self, field, value)

    def __init_subclass__(cls) -> None:
        setattr(cls, cls.TAG[0], cls.TAG[1])

    def to_wire(self) -> dict[str, object]:
        """The JSON-ready form: the tag, then every field (nulls included)."""
        wire: dict[str, object] = {self.TAG[0]: self.TAG[1]}
        for field in self.FIELDS:
            wire[field] = _to_wire(getattr(self, field))
        return wire

    def to_json(self) -> str:
        return jsontext.dumps(self.to_wire())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and type(other) is type(self) and self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{field}={getattr(self, field)!r}" for field in self.FIELDS)
        return f"{type(self).__name__}({fields})"


def _to_wire(value: object) -> object:
    if isinstance(value, Message):
        return value.to_wire()
    if isinstance(value, list):
        return [_to_wire(item) for item in value]
    return value


class Variants:
    """A choice of messages told apart by their tag field, e.g. every request by ``op``."""

    def __init__(self, tag_field: str, *members: type[Message]) -> None:
        self.tag_field = tag_field
        self.members = members
        self._by_tag: dict[str, type[Message]] = {}
        for member in members:
            if member.TAG[0] != tag_field:
                raise TypeError(f"{member.__name__} is tagged by {member.TAG[0]!r}, not {tag_field!r}")
            self._by_tag[member.TAG[1]] = member

    def parse(self, value: object, where: str = "frame") -> Any:
        """The message ``value`` (a decoded JSON object) holds."""
        if not isinstance(value, dict):
            raise _fail(where, "a JSON object", value)
        tag = value.get(self.tag_field)
        member = self._by_tag.get(tag) if isinstance(tag, str) else None
        if member is None:
            raise ProtocolError(f"{where}: unknown {self.tag_field} {tag!r}")
        return member(**value)
