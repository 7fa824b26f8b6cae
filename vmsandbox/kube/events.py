"""The Event every component files about a sandbox (or pool), built in one place."""

from __future__ import annotations

import uuid
from typing import Any

from vmsandbox.api.constants import API_VERSION, KIND
from vmsandbox.kube.leases import micro_time

MESSAGE_LIMIT = 1024
NORMAL = "Normal"
WARNING = "Warning"


def event_body(
    obj: dict[str, Any], event_type: str, reason: str, message: str, *, component: str, host: str
) -> dict[str, Any]:
    """A ``v1`` Event about ``obj`` (a VMSandbox unless it names another kind), named as
    client-go's recorder names them: the object's name and a unique suffix."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    stamp = micro_time()
    name = f"{meta.get('name', 'sandbox')}.{uuid.uuid4().hex[:16]}"
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
