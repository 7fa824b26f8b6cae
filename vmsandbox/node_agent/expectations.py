"""Which watch events predate the agent's own write, told by identity, never by ordering versions.

resourceVersions are opaque strings: a client may compare two for equality, nothing more. The
watch delivers an object's versions in order, so once the agent has written version ``R`` (or
read it afresh), every event before the one carrying ``R`` is older than what the agent holds:
the worker expects ``R`` and ignores events until it arrives. A version the watch delivered
already is not waited for again; a full list starts over (its versions are current), and an
expectation the watch never meets lapses after ``ttl`` seconds so a lost event cannot stall
the worker.
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
        """The agent wrote (or read afresh) ``version``: events before it are stale. False when
        the watch delivered that version already (the agent's copy may be newer than it)."""
        if not version:
            return False
        if version in self._delivered:
            self._expected = None  # it supersedes any earlier write's, and it is here already
            return False
        self._expected = (version, self._clock() + self.ttl)
        return True

    def current(self, version: str | None) -> bool:
        """Whether a watch event carrying ``version`` is at least as new as the agent's own copy."""
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
