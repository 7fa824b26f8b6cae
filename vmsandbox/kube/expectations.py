"""Which watch events predate a client's own write, told by identity, never by ordering versions.

resourceVersions are opaque strings: a client may compare two for equality, nothing more. The
watch delivers an object's versions in order, so once a client has written version ``R`` (or
read it afresh), every event before the one carrying ``R`` is older than what the client holds:
it expects ``R`` and ignores events until it arrives. A version the watch delivered already is
not waited for again; a full list starts over (its versions are current), and an expectation
the watch never meets lapses after ``ttl`` seconds so a lost event cannot stall the client.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

#: Seconds after which an expected version no longer holds events back.
TTL_SECONDS = 30.0
#: How many delivered versions are remembered (a write's answer may come after its event).
REMEMBERED = 16


class WriteExpectations:
    def __init__(self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._expected: tuple[str, float] | None = None
        self._delivered: deque[str] = deque(maxlen=REMEMBERED)

    def expect(self, version: str | None) -> bool:
        """The client wrote (or read afresh) ``version``: events before it are stale. False when
        the watch delivered that version already (the client's copy may be newer than it)."""
        if not version:
            return False
        if version in self._delivered:
            self._expected = None  # it supersedes any earlier write's, and it is here already
            return False
        self._expected = (version, self._clock() + self.ttl)
        return True

    def current(self, version: str | None) -> bool:
        """Whether a watch event carrying ``version`` is at least as new as the client's own copy."""
        if version:
            self._delivered.append(version)
        expected = self._expected
        if expected is None:
            return True
        if version == expected[0] or self._clock() >= expected[1]:
            self._expected = None
            return True
        return False

    def reset(self) -> None:
        """A full list: what it holds is current."""
        self._expected = None

    @property
    def waiting_for(self) -> str | None:
        return self._expected[0] if self._expected else None

    @property
    def holding(self) -> bool:
        """Whether an expected version still holds watch events back (False once it lapsed)."""
        return self._expected is not None and self._clock() < self._expected[1]


class VersionGate:
    """One :class:`WriteExpectations` per object of a cache fed by three sources: a watch, the
    client's own writes and reads, and fresh lists. A list's copy of an object the watch
    delivered, or the client wrote, while the list was on its way may be older than the cache's,
    and is dropped; any other copy from a list or a write is kept and expected on the watch."""

    def __init__(self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._by_key: dict[str, WriteExpectations] = {}
        self._touched: set[str] | None = None

    def _of(self, key: str) -> WriteExpectations:
        gate = self._by_key.get(key)
        if gate is None:
            gate = self._by_key[key] = WriteExpectations(self.ttl, self._clock)
        return gate

    def watched(self, key: str, version: str | None) -> bool:
        """A watch event: whether to store it (False: it predates what the cache holds)."""
        if self._touched is not None:
            self._touched.add(key)
        return self._of(key).current(version)

    def own(self, key: str, version: str | None) -> None:
        """The answer to the client's own write or fresh read: stored, and expected. A list on
        its way may have been read before it, so the list's copy will not count."""
        if self._touched is not None:
            self._touched.add(key)
        self._of(key).expect(version)

    def begin_list(self) -> None:
        self._touched = set()

    def listed(self, key: str, version: str | None) -> bool:
        """An item of the list begun last: whether to store it."""
        if self._touched is not None and key in self._touched:
            return False
        self._of(key).expect(version)
        return True

    def end_list(self) -> None:
        self._touched = None

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)

    def holding(self, key: str) -> bool:
        """Whether watch events of ``key`` are still held back for a version the watch has not
        delivered (see :attr:`WriteExpectations.holding`)."""
        gate = self._by_key.get(key)
        return gate is not None and gate.holding
