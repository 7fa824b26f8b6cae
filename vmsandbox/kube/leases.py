"""``coordination.k8s.io/v1`` Leases: the agent's heartbeat and the operator's leader election
write the same record, built here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

LEASE_API_VERSION = "coordination.k8s.io/v1"


def micro_time(at: datetime | None = None) -> str:
    """A ``MicroTime`` as the API server writes one."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(holder: str, duration: float, now: str, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """``holder``'s renewal of a Lease whose spec was ``old`` (None: a new Lease): the acquire
    time is kept while the holder stays, and a change of holder counts a transition."""
    old = old or {}
    transitions = int(old.get("leaseTransitions") or 0)
    if old.get("holderIdentity") == holder:
        acquired = old.get("acquireTime") or now
    else:
        transitions += 1 if old else 0
        acquired = now
    return {
        "holderIdentity": holder,
        "leaseDurationSeconds": max(1, round(duration)),
        "acquireTime": acquired,
        "renewTime": now,
        "leaseTransitions": transitions,
    }


def lease_body(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
