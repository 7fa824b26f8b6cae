"""Kubernetes Events for each decision, posted in the background so decisions never wait on them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from vmsandbox.api import API_VERSION, KIND
from vmsandbox.operator.kube import ApiError, KubeClient, events_path

log = logging.getLogger("vmsandbox.operator.events")

COMPONENT = "vmsandbox-operator"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventRecorder:
    """A bounded queue drained by one task; when full, the oldest Events are dropped, never the work."""

    def __init__(
        self, client: KubeClient, *, enabled: bool = True, host: str = "", limit: int = 5000
    ) -> None:
        self._client = client
        self._enabled = enabled
        self._host = host
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=limit)
        self._task: asyncio.Task[None] | None = None

    def record(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """``kind`` is ``Normal`` or ``Warning``; ``obj`` the sandbox (its metadata is what matters)."""
        if not self._enabled:
            return
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            # An explicit name, as client-go's recorder makes: name + "." + a unique suffix.
            "metadata": {
                "name": f"{meta.get('name', 'sandbox')}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": COMPONENT, "host": self._host},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._host,
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait((namespace, event))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="events")

    async def stop(self, flush_timeout: float = 2.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), flush_timeout)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _drain(self) -> None:
        while True:
            namespace, event = await self._queue.get()
            try:
                await self._client.create(events_path(namespace), event)
            except ApiError as exc:
                log.debug("event not posted: %s", exc)
            finally:
                self._queue.task_done()
