"""What the operator knows about one node: its labels and taints, its agent's capacity and heartbeat."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
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
    """A node as seen through its Node object and its agent's Lease.

    ``renewed`` is when this operator last saw the Lease change, on its own clock, as leader
    election judges a Lease: the agent's ``renewTime`` is never compared with the operator's
    clock, so clock skew between nodes cannot make a live agent look lost.
    """

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    capacity: NodeCapacity | None = None
    capacity_error: str | None = None
    renewed: datetime | None = None
    endpoint: str | None = None

    def lease_age(self, now: datetime) -> float | None:
        """Seconds since the operator last saw the agent renew its Lease; None when it never did."""
        return None if self.renewed is None else (now - self.renewed).total_seconds()

    def agent_alive(self, now: datetime, window: float) -> bool:
        age = self.lease_age(now)
        return age is not None and age <= window and self.labels.get(AGENT_READY_LABEL) == "ready"


def lease_node(lease: Mapping[str, Any]) -> str | None:
    """The node an agent Lease speaks for, from its name ``vmsandbox-agent-<node>``."""
    name = str((lease.get("metadata") or {}).get("name") or "")
    return name.removeprefix(AGENT_LEASE_PREFIX) if name.startswith(AGENT_LEASE_PREFIX) else None


def lease_marker(lease: Mapping[str, Any]) -> str:
    """What changes each time an agent renews or re-acquires its Lease (compared, never read as a time)."""
    spec = lease.get("spec") or {}
    return "|".join(str(spec.get(k) or "") for k in ("holderIdentity", "acquireTime", "renewTime"))


def node_view(node: Mapping[str, Any], renewed: datetime | None) -> NodeView:
    """``renewed``: when the operator last saw the node's agent Lease change (None: no Lease)."""
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
        renewed=renewed,
        endpoint=annotations.get(AGENT_ENDPOINT_ANNOTATION),
    )
