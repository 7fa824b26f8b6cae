"""A de-duplicating work queue: a key is queued at most once and never processed by two workers at once."""

from __future__ import annotations

import asyncio
import time


class WorkQueue:
    """Keys that fail are retried after ``base * 2**failures`` seconds, capped at ``cap``, until
    :meth:`forget` says one succeeded: a key that keeps failing backs off instead of spinning, and
    one failing key never delays another."""

    def __init__(self, base: float = 0.5, cap: float = 60.0) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._idle_since = time.monotonic()

    def add(self, key: str) -> None:
        if key in self._pending:
            return
        if key in self._active:
            self._dirty.add(key)
            return
        self._pending.add(key)
        self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` in ``delay`` seconds; an earlier timer for the same key wins."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(delay, 0.0)
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def retry(self, key: str, at_least: float = 0.0) -> float:
        """Queue a key that failed after its back-off, or after ``at_least`` seconds if longer (an
        API server's Retry-After: asking sooner only earns another 429), never later than the cap
        (a proxy's absurd Retry-After must not park a key for good); returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(max(self.base * 2**failures, at_least), self.cap)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """The key succeeded: its next failure starts from the base delay again."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> str:
        key = await self._queue.get()
        self._pending.discard(key)
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)
        if not self._pending and not self._active:
            self._idle_since = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last key was done with nothing queued or in progress; 0 while busy."""
        if self._pending or self._active:
            return 0.0
        return time.monotonic() - self._idle_since

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._failures.clear()
