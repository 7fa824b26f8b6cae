"""A VMSandboxPool as this node's agent needs it: its members' shape and this node's share.

Parsed with the API's own models (the agent validates again what becomes a VM); whether a
sandbox fits a pool is the API's ``shape_mismatch``, the rule the operator schedules by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmsandbox.api.network import DEFAULT_MODE
from vmsandbox.api.pool import InvalidPool, PoolTemplate, parse_pool, shape_mismatch
from vmsandbox.api.resource import VMSandbox


@dataclass(frozen=True)
class Shape:
    vcpus: int
    memory_mib: int
    hypervisor: str
    #: None: the template names none, so the cluster's default mode.
    network_mode: str | None


@dataclass(frozen=True)
class PoolView:
    namespace: str
    name: str
    uid: str
    mode: str
    #: Members this node should keep ready (its entry in ``status.nodes``, else 0).
    desired: int
    #: ``spec.paused``: no member is made or replaced.
    paused: bool
    shape: Shape
    template: PoolTemplate

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pool_view(obj: dict[str, Any], node: str, default_hypervisor: str) -> PoolView | None:
    """The pool as seen from ``node``; None when it does not parse."""
    try:
        pool = parse_pool(obj)
    except InvalidPool:
        return None
    template = pool.spec.template
    desired = next((n.desired for n in pool.status.nodes or [] if n.name == node), 0)
    network = template.network
    shape = Shape(
        vcpus=template.resources.vcpus,
        memory_mib=template.resources.memory_mib,
        hypervisor=template.hypervisor.value if template.hypervisor else default_hypervisor,
        network_mode=network.mode.value if network is not None and network.mode is not None else None,
    )
    return PoolView(
        namespace=pool.metadata.namespace or "",
        name=pool.metadata.name or "",
        uid=pool.metadata.uid or "",
        mode=pool.spec.mode.value,
        desired=min(desired, 64),
        paused=pool.spec.paused,
        shape=shape,
        template=template,
    )


def mismatch(pool: PoolView, sandbox: VMSandbox, node_hypervisor: str) -> str | None:
    """Why ``sandbox`` cannot take a member of ``pool`` on this node, or None when it can.

    Hypervisors fall back to the node's default; the cluster's default network mode is the one
    the operator recorded for the sandbox at placement.
    """
    placed = sandbox.status.network.mode if sandbox.status.network is not None else None
    return shape_mismatch(
        sandbox.spec,
        pool.template,
        node_hypervisor=node_hypervisor,
        default_mode=placed or DEFAULT_MODE,
        placed_mode=placed,
    )
