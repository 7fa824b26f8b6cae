"""Kubernetes Events on the VMSandbox for each step and failure, posted off the workers' path.

Events are best effort: a full queue or a failed post is logged and dropped, never allowed
to slow down or fail a sandbox.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any

from vmsandbox.api.constants import API_VERSION, KIND
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
        meta = obj.get("metadata", {})
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{time.time_ns():x}",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT, "host": self.node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            log.warning("event queue full; dropped %s for %s", reason, meta.get("name"))

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
