"""List + watch of this node's sandboxes, filtered by the server with the node label selector.

The watch resumes from the last resourceVersion it saw (bookmarks included), so a stream the
server closes costs one request and no events; when the server answers 410 Gone (the version
was compacted away) the watch lists again and the supervisor reconciles against the full list.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

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


def apply_event(event: dict[str, Any], supervisor: Supervisor) -> str | None:
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


class SandboxWatch:
    def __init__(
        self, kube: Kube, supervisor: Supervisor, metrics: AgentMetrics, *, node: str, timeout_seconds: int
    ) -> None:
        self.kube = kube
        self.supervisor = supervisor
        self.metrics = metrics
        self.selector = node_selector(node)
        self.timeout_seconds = timeout_seconds
        self.synced = threading.Event()
        self.thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._first_list = True
        self._stop = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ends the loop once the current watch request returns (within its timeout)."""
        self._stop.set()

    def _list(self) -> str:
        items, rv = self.kube.list_sandboxes(self.selector)
        self.supervisor.sync(items)
        if self._first_list:
            self._first_list = False
            self.supervisor.schedule_orphan_sweep()
        self.synced.set()
        log.info("listed %d sandbox(es) for %s at resourceVersion %s", len(items), self.selector, rv)
        return rv

    def _run(self) -> None:
        backoff = 0.5
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                for event in self.kube.watch_sandboxes(self.selector, rv, self.timeout_seconds):
                    if self._stop.is_set():
                        return
                    rv = apply_event(event, self.supervisor) or rv
                    backoff = 0.5
                self.metrics.watch_restarts.labels("closed").inc()
            except Gone as exc:
                log.info("watch expired (%s); listing again", exc)
                self.metrics.watch_restarts.labels("gone").inc()
                rv = None
            except Exception as exc:
                if status_code(exc) == 410:
                    self.metrics.watch_restarts.labels("gone").inc()
                    rv = None
                    continue
                self.metrics.watch_restarts.labels("error").inc()
                log.warning("watch failed: %s; retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(MAX_ERROR_BACKOFF, backoff * 2)
