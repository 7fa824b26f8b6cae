"""Builders for sandbox, Node and Lease objects as the API server stores them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from vmsandbox.api import NodeCapacity, VMSandbox
from vmsandbox.api.constants import AGENT_LEASE_PREFIX, AGENT_READY_LABEL, CAPACITY_ANNOTATION
from vmsandbox.operator.nodes import NodeView, node_view


def sandbox_obj(
    name: str = "sb",
    namespace: str = "default",
    *,
    vcpus: int = 1,
    memory: int = 256,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandbox",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "resourceVersion": "1"},
        "spec": {
            "image": "docker.io/library/busybox:1.36",
            "resources": {"vcpus": vcpus, "memoryMiB": memory},
            **spec,
        },
    }


def sandbox(name: str = "sb", **kw: Any) -> VMSandbox:
    return VMSandbox.model_validate(sandbox_obj(name, **kw))


def micro(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_obj(
    name: str,
    *,
    vcpus: int = 8,
    memory: int = 8192,
    hypervisors: tuple[str, ...] = ("cloud-hypervisor",),
    default: str | None = "cloud-hypervisor",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    ready: bool = True,
    endpoint: str | None = None,
) -> dict[str, Any]:
    cap = NodeCapacity(
        vcpus=vcpus, memory_mib=memory, hypervisors=list(hypervisors), default_hypervisor=default
    )
    annotations = {CAPACITY_ANNOTATION: json.dumps(cap.to_wire())}
    if endpoint:
        annotations["vmsandbox.io/agent-endpoint"] = endpoint
    all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    if ready:
        all_labels[AGENT_READY_LABEL] = "ready"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "annotations": annotations},
        "spec": {"taints": taints or []},
    }


def lease_obj(node: str, namespace: str = "vmsandbox-system", *, age: float = 0.0) -> dict[str, Any]:
    renewed = datetime.now(UTC) - timedelta(seconds=age)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": f"{AGENT_LEASE_PREFIX}{node}", "namespace": namespace},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": micro(renewed)},
    }


def view(name: str, *, lease_age: float | None = 0.0, **kw: Any) -> NodeView:
    renewed = None if lease_age is None else datetime.now(UTC) - timedelta(seconds=lease_age)
    return node_view(node_obj(name, **kw), renewed)
