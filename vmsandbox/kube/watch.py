"""List, then watch from the list's resourceVersion, resuming after every closed stream.

A stream the server closes costs one request and no events (bookmarks keep the version fresh);
a 410 Gone (the version was compacted away) lists again, and the observer reconciles against
the full list; other failures back off. resourceVersions are only passed back, never compared.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from vmsandbox.kube.errors import ApiError

log = logging.getLogger("vmsandbox.kube.watch")

FIRST_ERROR_BACKOFF = 0.5
MAX_ERROR_BACKOFF = 30.0


class Gone(ApiError):
    """The watch's resourceVersion is too old: list again (the server said so in the stream)."""

    def __init__(self, message: str) -> None:
        super().__init__("WATCH", "", 410, message)


class Observer(Protocol):
    def observe(self, obj: dict[str, Any]) -> None: ...

    def forget(self, obj: dict[str, Any]) -> None: ...


def apply_event(event: dict[str, Any], observer: Observer) -> str | None:
    """Hand one watch event to ``observer``; returns the resourceVersion to resume from."""
    kind = event.get("type")
    obj = event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == 410:
            raise Gone(obj.get("message", "resource version too old"))
        raise ApiError("WATCH", "", int(obj.get("code") or 0), str(obj.get("message")))
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if kind in ("ADDED", "MODIFIED"):
        observer.observe(obj)
    elif kind == "DELETED":
        observer.forget(obj)
    return str(rv) if rv else None


class ResumingWatch:
    """The loop on a thread of its own; subclasses say what to list, watch and do with an event.
    ``on_restart`` hears why each stream ended: ``closed``, ``gone`` or ``error``."""

    def __init__(self, *, name: str, timeout_seconds: int, on_restart: Callable[[str], None]) -> None:
        self.timeout_seconds = timeout_seconds
        self.on_restart = on_restart
        self.synced = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ends the loop once the current watch request returns (within its timeout)."""
        self._stop.set()

    def _list(self) -> str:
        """Lists, hands the items on, and returns the list's resourceVersion."""
        raise NotImplementedError

    def _events(self, resource_version: str) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _apply(self, event: dict[str, Any]) -> str | None:
        """Handles one event; returns the resourceVersion to resume from."""
        raise NotImplementedError

    def _run(self) -> None:
        backoff = FIRST_ERROR_BACKOFF
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                for event in self._events(rv):
                    if self._stop.is_set():
                        return
                    rv = self._apply(event) or rv
                    backoff = FIRST_ERROR_BACKOFF
                self.on_restart("closed")
            except Exception as exc:
                if isinstance(exc, ApiError) and exc.gone:
                    log.info("%s watch expired (%s); listing again", self.thread.name, exc)
                    self.on_restart("gone")
                    rv = None
                    continue
                self.on_restart("error")
                log.warning("%s watch failed: %s; retrying in %.1fs", self.thread.name, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(MAX_ERROR_BACKOFF, backoff * 2)
