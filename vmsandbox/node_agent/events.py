"""Kubernetes Events on the VMSandbox for each step and failure, posted off the workers' path.

Events are best effort: a full buffer or a failed post is logged and dropped, never allowed
to slow down or fail a sandbox. Repeats of an Event still waiting raise its count.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from vmsandbox.kube.events import EventBuffer
from vmsandbox.node_agent.kube import Kube

log = logging.getLogger("vmsandbox.node_agent.events")

COMPONENT = "vmsandbox-agent"
#: Events waiting at most; the oldest are dropped (and counted) beyond.
LIMIT = 4096


class EventRecorder:
    """The kube layer's buffer drained by one thread, as fast as the API server takes them."""

    def __init__(self, kube: Kube, node: str) -> None:
        self.kube = kube
        self.node = node
        self._buffer = EventBuffer(component=COMPONENT, host=node, limit=LIMIT)
        self._changed = threading.Condition()
        self._posting = False
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def record(self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        with self._changed:
            self._buffer.file(obj, reason, message, warning=warning, hold=False)
            self._changed.notify_all()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) until every Event filed so far was posted or refused."""
        with self._changed:
            self._changed.wait_for(lambda: not len(self._buffer) and not self._posting, timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._posting = False
                self._changed.notify_all()
                self._changed.wait_for(lambda: len(self._buffer) > 0)
                filed = self._buffer.take()
                self._posting = filed is not None
            if filed is None:
                continue
            error: BaseException | None = None
            try:
                self.kube.create_event(filed.namespace, filed.event)
            except Exception as exc:  # best effort by design
                error = exc
            with self._changed:
                self._buffer.outcome(filed, error)
