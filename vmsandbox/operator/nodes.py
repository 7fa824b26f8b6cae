"""What the operator knows about one node: its labels and taints, its agent's capacity and heartbeat."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from vmsandbox.api import NodeCapacity
from vmsandbox.api.constants import (
    AGENT_ENDPOINT_ANNOTATION,
    AGENT_LEASE_PREFIX,
    AGENT_READY_LABEL,
    CAPACITY_ANNOTATION,
)

#: Node annotation with the agent's HTTP base URL (logs, health).
#: Taint effects that keep sandboxes off a node (PreferNoSchedule only steers).
HARD_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str | None
    effect: str

    def describe(self) -> str:
        return f"taint {self.key}={self.value}" if self.value else f"taint {self.key}"


@dataclass(frozen=True)
class NodeView:
    """A node as seen through its Node object and its agent's Lease; ``renewed`` is when the Lease was."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    capacity: NodeCapacity | None = None
    capacity_error: str | None = None
    renewed: datetime | None = None
    endpoint: str | None = None

    def lease_age(self, now: datetime) -> float | None:
        """Seconds since the agent last renewed its Lease; None when it never did."""
        return None if self.renewed is None else (now - self.renewed).total_seconds()

    def agent_alive(self, now: datetime, window: float) -> bool:
        age = self.lease_age(now)
        return age is not None and age <= window and self.labels.get(AGENT_READY_LABEL) == "ready"


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 (with or without fractions), as Kubernetes writes Time and MicroTime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def lease_node(lease: Mapping[str, Any]) -> str | None:
    """The node an agent Lease speaks for, from its name ``vmsandbox-agent-<node>``."""
    name = str((lease.get("metadata") or {}).get("name") or "")
    return name.removeprefix(AGENT_LEASE_PREFIX) if name.startswith(AGENT_LEASE_PREFIX) else None


def lease_renewed(lease: Mapping[str, Any] | None) -> datetime | None:
    if not lease:
        return None
    spec = lease.get("spec") or {}
    return parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))


def node_view(node: Mapping[str, Any], lease: Mapping[str, Any] | None) -> NodeView:
    meta = node.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    taints = tuple(
        Taint(key=str(t.get("key", "")), value=t.get("value"), effect=str(t.get("effect", "")))
        for t in (node.get("spec") or {}).get("taints") or []
        if isinstance(t, Mapping)
    )
    capacity: NodeCapacity | None = None
    error: str | None = None
    raw = annotations.get(CAPACITY_ANNOTATION)
    if raw is None:
        error = "no capacity published"
    else:
        try:
            capacity = NodeCapacity.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            error = "capacity annotation unreadable"
    return NodeView(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        taints=taints,
        capacity=capacity,
        capacity_error=error,
        renewed=lease_renewed(lease),
        endpoint=annotations.get(AGENT_ENDPOINT_ANNOTATION),
    )
