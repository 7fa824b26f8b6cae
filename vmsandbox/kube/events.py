"""The Events every component files about a sandbox (or pool): built, de-duplicated and
bounded in one place; the operator's and the agent's recorders only say when to post them."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmsandbox.api.constants import API_VERSION, KIND
from vmsandbox.kube.leases import micro_time

log = logging.getLogger("vmsandbox.kube.events")

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


@dataclass
class Filed:
    namespace: str
    event: dict[str, Any]
    queued: float = field(default_factory=time.monotonic)


_Key = tuple[str, ...]


class EventBuffer:
    """The Events waiting to be posted, shared by the operator's and the agent's recorders.

    An Event equal to one still waiting (same object, type, reason and message) raises that
    one's ``count`` instead of being filed twice. ``held`` Events may wait for a quiet moment;
    the others go first. At most ``limit`` wait; beyond that the oldest (held ones first) is
    dropped, and every drop is counted (``dropped``, ``on_drop``) and logged. Not thread-safe:
    each recorder guards it as its own concurrency needs.
    """

    def __init__(
        self, *, component: str, host: str, limit: int, on_drop: Callable[[], None] | None = None
    ) -> None:
        self.component, self.host = component, host
        self.limit = max(1, limit)
        self.on_drop = on_drop
        self.urgent: OrderedDict[_Key, Filed] = OrderedDict()
        self.held: OrderedDict[_Key, Filed] = OrderedDict()
        self.dropped = 0
        self.posted = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self.urgent) + len(self.held)

    def file(self, obj: dict[str, Any], reason: str, message: str, *, warning: bool, hold: bool) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        kind = WARNING if warning else NORMAL
        message = message[:MESSAGE_LIMIT]
        key = (namespace, str(meta.get("name")), str(meta.get("uid")), kind, str(reason), message)
        same = self.urgent.get(key) or self.held.get(key)
        if same is not None:
            same.event["count"] += 1
            same.event["lastTimestamp"] = micro_time()
            return
        if len(self) >= self.limit:
            self.drop(f"more than {self.limit} were waiting")
        event = event_body(obj, kind, reason, message, component=self.component, host=self.host)
        (self.held if hold else self.urgent)[key] = Filed(namespace, event)

    def take(self) -> Filed | None:
        """The next Event to post: urgent ones first, then the oldest held one."""
        waiting = self.urgent or self.held
        return waiting.popitem(last=False)[1] if waiting else None

    def oldest_held_age(self) -> float | None:
        if not self.held:
            return None
        return time.monotonic() - next(iter(self.held.values())).queued

    def drop(self, why: str) -> None:
        (self.held or self.urgent).popitem(last=False)
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop()
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("%d Events dropped so far (%s)", self.dropped, why)

    def outcome(self, filed: Filed, error: BaseException | None) -> None:
        """Count a post's outcome. A refused Event is never retried (Events are best effort); the
        first refusal and every hundredth are warnings, so a missing permission is seen once
        rather than at the post rate."""
        if error is None:
            self.posted += 1
            return
        self.failed += 1
        level = logging.WARNING if self.failed == 1 or self.failed % 100 == 0 else logging.DEBUG
        name = filed.event["involvedObject"]["name"]
        log.log(
            level,
            "could not post Event %s for %s (%d refused so far): %s",
            filed.event["reason"],
            name,
            self.failed,
            error,
        )
