"""Kubernetes Events on the VMSandbox for each step and failure, posted off the workers' path.

Events are best effort: a full queue or a failed post is logged and dropped, never allowed
to slow down or fail a sandbox.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from vmsandbox.kube.events import NORMAL, WARNING, event_body
from vmsandbox.node_agent.kube import Kube

log = logging.getLogger("vmsandbox.node_agent.events")

COMPONENT = "vmsandbox-agent"
QUEUE_SIZE = 4096


class EventRecorder:
    def __init__(self, kube: Kube, node: str) -> None:
        self.kube = kube
        self.node = node
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def record(self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        event_type = WARNING if warning else NORMAL
        body = event_body(obj, event_type, reason, message, component=COMPONENT, host=self.node)
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            log.warning("event queue full; dropped %s for %s", reason, body["involvedObject"]["name"])

    def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            try:
                self.kube.create_event(body["metadata"]["namespace"], body)
            except Exception as exc:  # best effort by design
                log.warning(
                    "could not post event %s: %s",
                    body["reason"],
                    exc,
                    extra={
                        "namespace": body["metadata"]["namespace"],
                        "name": body["involvedObject"]["name"],
                    },
                )
