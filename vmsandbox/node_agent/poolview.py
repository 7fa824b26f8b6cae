"""A VMSandboxPool as this node's agent needs it: its members' shape and this node's share.

Read from the object's JSON: the operator already validated the template, and the agent
validates again what becomes a VM (sizes through the same models a sandbox's spec uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from vmsandbox.api.network import NetworkMode, SandboxNetwork, effective_mode
from vmsandbox.api.resource import VMSandbox
from vmsandbox.api.spec import Hypervisor, Resources


@dataclass(frozen=True)
class Shape:
    vcpus: int
    memory_mib: int
    hypervisor: str
    #: None: the template names none, so the cluster's default mode, whatever a sandbox recorded.
    network_mode: str | None


@dataclass(frozen=True)
class PoolView:
    namespace: str
    name: str
    uid: str
    mode: str
    #: Members this node should keep ready (its entry in ``status.nodes``, else 0).
    desired: int
    shape: Shape

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pool_view(obj: dict[str, Any], node: str, default_hypervisor: str) -> PoolView | None:
    """The pool as seen from ``node``; None when its template cannot be read."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    try:
        resources = Resources.model_validate(template.get("resources") or {})
        hypervisor = Hypervisor(template["hypervisor"]).value if template.get("hypervisor") else None
        network = SandboxNetwork.model_validate(template["network"]) if template.get("network") else None
    except (ValidationError, ValueError):
        return None
    desired = 0
    for entry in (obj.get("status") or {}).get("nodes") or []:
        if isinstance(entry, dict) and entry.get("name") == node and isinstance(entry.get("desired"), int):
            desired = max(0, min(64, entry["desired"]))
    shape = Shape(
        vcpus=resources.vcpus,
        memory_mib=resources.memory_mib,
        hypervisor=hypervisor or default_hypervisor,
        network_mode=network.mode.value if network is not None and network.mode is not None else None,
    )
    return PoolView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        mode=str(spec.get("mode") or "booted"),
        desired=desired,
        shape=shape,
    )


def mismatch(pool: PoolView, sandbox: VMSandbox, hypervisor: str) -> str | None:
    """Why ``sandbox`` (on ``hypervisor``) cannot take a member of ``pool``, or None when it can."""
    shape = pool.shape
    res = sandbox.spec.resources
    diffs = []
    if (res.vcpus, res.memory_mib) != (shape.vcpus, shape.memory_mib):
        diffs.append(
            f"resources {res.vcpus} vCPUs/{res.memory_mib} MiB, the pool's "
            f"{shape.vcpus} vCPUs/{shape.memory_mib} MiB"
        )
    if hypervisor != shape.hypervisor:
        diffs.append(f"hypervisor {hypervisor}, the pool's {shape.hypervisor}")
    mode = effective_mode(sandbox.spec.network, sandbox.status.network)
    wanted = NetworkMode(shape.network_mode) if shape.network_mode else None
    if wanted is not None and mode != wanted:
        diffs.append(f"network mode {mode.value}, the pool's {wanted.value}")
    return "; ".join(diffs) or None
