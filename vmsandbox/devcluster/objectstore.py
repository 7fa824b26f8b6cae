"""A cache of the objects of some emulated kinds, read from the real server when first needed.

Every write to those kinds passes through the front, which invalidates the cache once the
server has answered and before the client hears back; the next request reads them afresh.
So a client that created a RoleBinding is authorized by it in its very next request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from vmsandbox.devcluster.corekinds import CoreKind
from vmsandbox.devcluster.translate import to_public

log = logging.getLogger("vmsandbox.devcluster.objectstore")

T = TypeVar("T")
#: GET path -> (status, parsed JSON), as the front itself.
Fetch = Callable[[str], Awaitable[tuple[int, Any]]]


class ObjectStore(Generic[T]):
    """The public objects of ``kinds``, built into a ``T`` by ``build``; ``None`` objects when unreadable."""

    def __init__(
        self, kinds: Iterable[CoreKind], fetch: Fetch, build: Callable[[list[dict[str, Any]]], T]
    ) -> None:
        self.kinds = tuple(kinds)
        self._fetch = fetch
        self._build = build
        self._value: T | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    def covers(self, kind: CoreKind | None) -> bool:
        return kind in self.kinds

    def invalidate(self) -> None:
        self._generation += 1
        self._value = None

    async def get(self) -> T:
        """The current value; a read that raced with a write is not kept, so the next get rereads."""
        if self._value is not None:
            return self._value
        async with self._lock:
            if self._value is not None:
                return self._value
            generation = self._generation
            objects = await self._load()
            value = self._build(objects or [])
            if objects is not None and generation == self._generation:
                self._value = value
            return value

    async def _load(self) -> list[dict[str, Any]] | None:
        objects: list[dict[str, Any]] = []
        for kind in self.kinds:
            status, body = await self._fetch(
                f"/apis/{kind.private_group}/{kind.version}/{kind.private_plural}"
            )
            if status == 404:
                continue  # the look-alike CRD is not installed yet: no objects of this kind
            if status != 200 or not isinstance(body, dict):
                log.warning("cannot read %s: HTTP %s", kind.plural, status)
                return None
            objects += [to_public(kind, item) for item in body.get("items") or [] if isinstance(item, dict)]
        return objects
