"""Pools for the agent tests: create one, give a node its share as the operator would, read members."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from tests.node_agent.support import AgentProcess, Cluster, wait_for
from vmsandbox.api.constants import GROUP, POOL_PLURAL, POOLS_ANNOTATION, VERSION
from vmsandbox.runtime.state import Record

POOLS = POOL_PLURAL


def create_pool(
    cluster: Cluster, name: str, template: dict[str, Any], replicas: int = 2, mode: str = "booted"
) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VMSandboxPool",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "mode": mode, "template": template},
    }
    obj: Any = cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, POOLS, body)
    return dict(obj)


def patch_spec(cluster: Cluster, name: str, **spec: Any) -> None:
    """A merge patch of the pool's spec (``replicas=0``, ``paused=True``), as ``kubectl patch`` would."""
    cluster.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        cluster.namespace,
        POOLS,
        name,
        {"spec": spec},
        _content_type="application/merge-patch+json",
    )


def share(cluster: Cluster, name: str, node: str, desired: int) -> None:
    """The operator's step: this node's share of the pool in ``status.nodes``."""
    patch = {"status": {"nodes": [{"name": node, "desired": desired, "ready": 0}]}}
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.namespace, POOLS, name, patch, _content_type="application/merge-patch+json"
    )


def delete_pool(cluster: Cluster, name: str) -> None:
    try:
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, POOLS, name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def published(cluster: Cluster, node: str) -> dict[str, Any]:
    annotations = cluster.node(node)["metadata"].get("annotations") or {}
    return dict(json.loads(annotations.get(POOLS_ANNOTATION) or "{}"))


def ready_count(cluster: Cluster, node: str, namespace: str, pool: str) -> int:
    return int(published(cluster, node).get(f"{namespace}/{pool}", {}).get("ready", 0))


def wait_ready(cluster: Cluster, agent: AgentProcess, pool: str, count: int, timeout: float = 60) -> None:
    wait_for(
        f"{count} ready member(s) of {pool} on {agent.node}",
        lambda: (
            ready_count(cluster, agent.node, cluster.namespace, pool) == count
            and len(members(agent.runtime_root, ready_only=True)) >= count
        ),
        timeout=timeout,
    )


def members(runtime_root: Path, ready_only: bool = False) -> dict[str, int]:
    """Pool members in the runtime's state: member id -> VMM pid."""
    found = {}
    for path in sorted(runtime_root.glob("vmsbp-*/state.json")):
        record = Record.model_validate_json(path.read_text())
        if record.kind != "member" or (ready_only and record.state.status != "created"):
            continue
        found[record.state.id] = record.state.vm.vmm_pid if record.state.vm else 0
    return found


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})
