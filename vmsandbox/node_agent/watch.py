"""List + watch of this node's sandboxes (filtered by the server with the node label selector)
and of every pool.

The watch resumes from the last resourceVersion it saw (bookmarks included), so a stream the
server closes costs one request and no events; when the server answers 410 Gone (the version
was compacted away) the watch lists again and the supervisor reconciles against the full list.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from vmsandbox.api.constants import NODE_LABEL
from vmsandbox.node_agent.kube import Kube, status_code
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.supervisor import Supervisor

log = logging.getLogger("vmsandbox.node_agent.watch")

MAX_ERROR_BACKOFF = 30.0


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def node_selector(node: str) -> str:
    return f"{NODE_LABEL}={node}"


class Observer(Protocol):
    def observe(self, obj: dict[str, Any]) -> None: ...

    def forget(self, obj: dict[str, Any]) -> None: ...


class PoolObserver(Observer, Protocol):
    def resync(self, items: list[dict[str, Any]]) -> None: ...


def apply_event(event: dict[str, Any], supervisor: Observer) -> str | None:
    """Hand one watch event to the supervisor; returns the resourceVersion to resume from."""
    kind = event.get("type")
    obj = event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == 410:
            raise Gone(obj.get("message", "resource version too old"))
        raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if kind in ("ADDED", "MODIFIED"):
        supervisor.observe(obj)
    elif kind == "DELETED":
        supervisor.forget(obj)
    return str(rv) if rv else None


class ResumingWatch:
    """List, then watch from the list's resourceVersion, resuming after every closed stream;
    lists again on 410 Gone and backs off on errors. Subclasses say what to list and watch."""

    def __init__(self, metrics: AgentMetrics, *, name: str, timeout_seconds: int) -> None:
        self.metrics = metrics
        self.timeout_seconds = timeout_seconds
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
        backoff = 0.5
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                for event in self._events(rv):
                    if self._stop.is_set():
                        return
                    rv = self._apply(event) or rv
                    backoff = 0.5
                self.metrics.watch_restarts.labels("closed").inc()
            except Gone as exc:
                log.info("%s watch expired (%s); listing again", self.thread.name, exc)
                self.metrics.watch_restarts.labels("gone").inc()
                rv = None
            except Exception as exc:
                if status_code(exc) == 410:
                    self.metrics.watch_restarts.labels("gone").inc()
                    rv = None
                    continue
                self.metrics.watch_restarts.labels("error").inc()
                log.warning("%s watch failed: %s; retrying in %.1fs", self.thread.name, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(MAX_ERROR_BACKOFF, backoff * 2)


class SandboxWatch(ResumingWatch):
    """This node's sandboxes, handed to the supervisor."""

    def __init__(
        self, kube: Kube, supervisor: Supervisor, metrics: AgentMetrics, *, node: str, timeout_seconds: int
    ) -> None:
        super().__init__(metrics, name="watch", timeout_seconds=timeout_seconds)
        self.kube = kube
        self.supervisor = supervisor
        self.selector = node_selector(node)
        self._first_list = True

    def _list(self) -> str:
        items, rv = self.kube.list_sandboxes(self.selector)
        self.supervisor.sync(items)
        if self._first_list:
            self._first_list = False
            self.supervisor.schedule_orphan_sweep()
        self.synced.set()
        log.info("listed %d sandbox(es) for %s at resourceVersion %s", len(items), self.selector, rv)
        return rv

    def _events(self, resource_version: str) -> Iterator[dict[str, Any]]:
        return self.kube.watch_sandboxes(self.selector, resource_version, self.timeout_seconds)

    def _apply(self, event: dict[str, Any]) -> str | None:
        return apply_event(event, self.supervisor)


class PoolWatch(ResumingWatch):
    """Every VMSandboxPool, kept in the pool keeper: a change wakes it, so a new or scaled pool is
    acted on at once rather than at its next periodic pass, and its passes list nothing."""

    def __init__(
        self, kube: Kube, keeper: PoolObserver, metrics: AgentMetrics, *, timeout_seconds: int
    ) -> None:
        super().__init__(metrics, name="pool-watch", timeout_seconds=timeout_seconds)
        self.kube = kube
        self.keeper = keeper

    def _list(self) -> str:
        items, rv = self.kube.list_pools()
        self.keeper.resync(items)
        self.synced.set()
        return rv

    def _events(self, resource_version: str) -> Iterator[dict[str, Any]]:
        return self.kube.watch_pools(resource_version, self.timeout_seconds)

    def _apply(self, event: dict[str, Any]) -> str | None:
        return apply_event(event, self.keeper)
