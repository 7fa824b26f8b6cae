"""Writes to a sandbox that never overwrite someone else's: status through /status, finalizers by JSON patch.

Every write carries the resourceVersion it was computed from. On a conflict the object is read
again and the same change is applied to the fresh copy, so the operator's fields (nodeName,
the Scheduled condition, bootTimings.schedule) survive the agent's writes and vice versa.
A change that alters nothing is not sent at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from vmsandbox.api.status import VMSandboxStatus
from vmsandbox.errors import VMSandboxError
from vmsandbox.node_agent.kube import Kube
from vmsandbox.node_agent.metrics import AgentMetrics

log = logging.getLogger("vmsandbox.node_agent.status")

MAX_ATTEMPTS = 8
Mutation = Callable[[VMSandboxStatus], None]


class WriteFailed(VMSandboxError):
    step = "status write"


def read_status(obj: dict[str, Any]) -> VMSandboxStatus:
    """The object's status; a status that no longer parses is started afresh rather than kept."""
    try:
        return VMSandboxStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        return VMSandboxStatus()


class SandboxWriter:
    def __init__(self, kube: Kube, metrics: AgentMetrics) -> None:
        self.kube = kube
        self.metrics = metrics

    def _fresh(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get_sandbox(namespace, name)

    def update_status(
        self, obj: dict[str, Any], mutate: Mutation, *, uid: str | None = None
    ) -> dict[str, Any] | None:
        """Apply ``mutate`` to the status of ``obj`` (re-read on conflict); None when the object is gone."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        uid = uid or obj["metadata"].get("uid")
        current: dict[str, Any] | None = obj
        for _attempt in range(MAX_ATTEMPTS):
            if current is None or current["metadata"].get("uid") != uid:
                return None
            status = read_status(current)
            before = status.to_wire()
            mutate(status)
            after = status.to_wire()
            if after == before and current.get("status") is not None:
                return current
            body = {**current, "status": after}
            try:
                return self.kube.replace_status(namespace, name, body)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status != 409:
                    raise WriteFailed(f"{namespace}/{name}: HTTP {exc.status}: {exc.reason}") from exc
                self.metrics.status_conflicts.inc()
                current = self._fresh(namespace, name)
        raise WriteFailed(f"{namespace}/{name}: still conflicting after {MAX_ATTEMPTS} attempts")

    def set_finalizer(self, obj: dict[str, Any], finalizer: str, present: bool) -> dict[str, Any] | None:
        """Add or remove one finalizer, guarded by a resourceVersion test; None when the object is gone."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        uid = obj["metadata"].get("uid")
        current: dict[str, Any] | None = obj
        fresh = False
        for _attempt in range(MAX_ATTEMPTS):
            if current is None or current["metadata"].get("uid") != uid:
                return None
            meta = current["metadata"]
            finalizers: list[str] = list(meta.get("finalizers") or [])
            if (finalizer in finalizers) == present:
                if present or fresh:
                    return current
                # A removal must not be skipped on the word of a stale copy.
                current, fresh = self._fresh(namespace, name), True
                continue
            ops: list[dict[str, Any]] = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
            ]
            if present and not finalizers:
                ops.append({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]})
            elif present:
                ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer})
            else:
                index = finalizers.index(finalizer)
                ops.append({"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer})
                ops.append({"op": "remove", "path": f"/metadata/finalizers/{index}"})
            try:
                return self.kube.patch_sandbox(namespace, name, ops)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status not in (409, 422):
                    raise WriteFailed(f"{namespace}/{name}: finalizer patch: HTTP {exc.status}") from exc
                current, fresh = self._fresh(namespace, name), True
        raise WriteFailed(f"{namespace}/{name}: finalizer still conflicting after {MAX_ATTEMPTS} attempts")
