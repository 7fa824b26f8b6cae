"""The Event every component files about a sandbox (or pool), built in one place."""

from __future__ import annotations

import threading
import time
from typing import Any

from vmsandbox.api.constants import API_VERSION, KIND
from vmsandbox.kube.leases import micro_time

MESSAGE_LIMIT = 1024
NORMAL = "Normal"
WARNING = "Warning"


_last_stamp = 0
_stamp_lock = threading.Lock()


def _stamp() -> int:
    """Nanoseconds since the epoch, strictly increasing within this process."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        return _last_stamp


def event_body(
    obj: dict[str, Any], event_type: str, reason: str, message: str, *, component: str, host: str
) -> dict[str, Any]:
    """A ``v1`` Event about ``obj`` (a VMSandbox unless it names another kind), named as
    client-go's recorder names them: the object's name and the time in hex nanoseconds, so a
    list (in name order) gives an object's Events in the order they happened."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    stamp = micro_time()
    name = f"{meta.get('name', 'sandbox')}.{_stamp():x}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion") or API_VERSION,
            "kind": obj.get("kind") or KIND,
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": str(reason),
        "message": message[:MESSAGE_LIMIT],
        "type": event_type,
        "source": {"component": component, "host": host},
        "reportingComponent": component,
        "reportingInstance": host,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
