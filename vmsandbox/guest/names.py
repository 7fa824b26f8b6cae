"""Names the host sends the guest agent, checked whole and by hand: the agent's container path
does not load ``re`` (see :mod:`vmsandbox.guest.spawn`)."""

from __future__ import annotations

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")
_HOST_CHARS = _ALNUM | frozenset(".-")
#: The longest container id accepted (as crun and runc do).
MAX_CONTAINER_ID = 255
#: The longest host name label (RFC 1123).
MAX_HOSTNAME = 63


def valid_container_id(name: str) -> bool:
    """A letter or digit, then letters, digits, ``_``, ``.`` and ``-``: 1 to 255 characters."""
    return 0 < len(name) <= MAX_CONTAINER_ID and name[0] in _ALNUM and all(c in _ID_CHARS for c in name)


def valid_hostname(name: str) -> bool:
    """1 to 63 letters, digits, dots and hyphens, beginning and ending with a letter or digit."""
    return (
        0 < len(name) <= MAX_HOSTNAME
        and name[0] in _ALNUM
        and name[-1] in _ALNUM
        and all(c in _HOST_CHARS for c in name)
    )
