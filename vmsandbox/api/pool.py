"""The VMSandboxPool custom resource: microVMs kept ready on nodes so sandboxes naming it start warm.

Members are local to each node's agent (no object per member). The operator writes each node's
share into ``status.nodes[].desired``; each agent publishes its ready members in the Node
annotation :data:`~vmsandbox.api.constants.POOLS_ANNOTATION`, which the operator sums back into
the pool's status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError

from vmsandbox.api.base import APIModel
from vmsandbox.api.constants import POOL_KIND
from vmsandbox.api.network import NetworkMode, SandboxNetwork
from vmsandbox.api.resource import InvalidSandbox, NamespacedObject, validate_object
from vmsandbox.api.spec import Hypervisor, Resources, Toleration, VMSandboxSpec
from vmsandbox.api.status import (
    ConditionList,
    ConditionStatus,
    KubeCondition,
    Reason,
    find_condition,
    generation_field,
    reason_field,
    with_condition,
)

#: Most members one pool may ask for: each booted member holds a VM's memory on its node.
MAX_REPLICAS = 64


class PoolMode(StrEnum):
    BOOTED = "booted"
    SNAPSHOT = "snapshot"


class PoolConditionType(StrEnum):
    READY = "Ready"


TEMPLATE_IMMUTABLE = "is immutable: members are kept per pool, not per template; delete and recreate the pool"


class PoolTemplate(APIModel):
    """The shape of the pool's VMs; a sandbox claims a member only when its own shape is the same."""

    resources: Resources = Field(
        default_factory=Resources,
        description="Size of each member's VM; a claiming sandbox's spec.resources must equal it.",
        json_schema_extra={"default": {}},
    )
    hypervisor: Hypervisor | None = Field(
        default=None,
        description="Backend of the members' VMs. Absent: each node's default. A claiming sandbox's "
        "backend (its spec.hypervisor, else its node's default) must equal it.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        description="Labels a node must carry, each with exactly this value, to hold members, as for Pods.",
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        description="Node taints the members tolerate, as for Pods; a node with an untolerated NoSchedule "
        "or NoExecute taint holds no member.",
    )
    network: SandboxNetwork | None = Field(
        default=None,
        description="The members' network; only its mode is part of the shape (a claim's egress rules "
        "are applied at the claim). Absent: the cluster's default mode.",
    )


class VMSandboxPoolSpec(APIModel):
    """How many VMs of which shape to keep ready, and whether booted or as a snapshot."""

    replicas: int = Field(
        default=1,
        ge=0,
        le=MAX_REPLICAS,
        description="Members to keep ready across the eligible nodes. Changed through the scale "
        "subresource too (kubectl scale, a HorizontalPodAutoscaler).",
    )
    paused: bool = Field(
        default=False,
        description="While true, no member is made or replaced: ready members still serve claims and a "
        "scale-down still deletes idle ones, so a pool can be drained by its claims or held still "
        "while a node is serviced. Ready is False (Paused) while members are missing.",
    )
    mode: PoolMode = Field(
        default=PoolMode.BOOTED,
        description="booted: each member is a VM booted with its guest agent ready and no container; it "
        "holds its memory and counts against its node's capacity. snapshot: one VM per node is booted, "
        "paused and snapshotted, and each claim restores a copy; no guest memory is held while idle and "
        "nothing counts against capacity but the snapshot's files. Immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"mode {TEMPLATE_IMMUTABLE}"}]
        },
    )
    template: PoolTemplate = Field(
        default_factory=PoolTemplate,
        description="The members' shape and where they may run. Immutable.",
        json_schema_extra={
            "default": {},
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": f"template {TEMPLATE_IMMUTABLE}"}
            ],
        },
    )


class PoolCondition(KubeCondition):
    """One observation of the pool, in the Kubernetes condition shape."""

    type: PoolConditionType = Field(
        description="What is observed: Ready (every member the nodes should hold is ready)."
    )
    reason: Reason | None = reason_field("MembersReady, MembersStarting, InsufficientCapacity, Paused")
    observed_generation: int | None = generation_field("pool")


class PoolNodeStatus(APIModel):
    """One node's share of the pool and what its agent reports ready."""

    name: str = Field(description="The node's name.")
    desired: int = Field(
        ge=0, description="Members the operator asks this node's agent to keep (its share of replicas)."
    )
    ready: int = Field(default=0, ge=0, description="Members the node's agent reports ready.")


class VMSandboxPoolStatus(APIModel):
    """What the operator observed, summed from the agents' reports, written through /status."""

    replicas: int | None = Field(
        default=None,
        ge=0,
        description="Members placed on nodes: the sum of nodes[].desired; less than spec.replicas when "
        "the eligible nodes cannot hold them all.",
    )
    ready_replicas: int | None = Field(
        default=None, ge=0, description="Members ready to be claimed, summed over nodes[].ready."
    )
    selector: str | None = Field(
        default=None,
        description="Label selector of the sandboxes that named this pool (vmsandbox.io/pool=<name>), "
        "as the scale subresource publishes it.",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation of the pool the operator last acted on."
    )
    nodes: list[PoolNodeStatus] | None = Field(
        default=None,
        description="Each node's share of the pool and its ready members, one entry per node.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    conditions: ConditionList[PoolCondition] = None

    def condition(self, kind: PoolConditionType) -> PoolCondition | None:
        return find_condition(self.conditions, kind)

    def set_condition(
        self,
        kind: PoolConditionType,
        status: ConditionStatus,
        reason: str,
        message: str,
        generation: int | None,
    ) -> None:
        """Set a condition, keeping its transition time when the status did not change."""
        new = PoolCondition(
            type=kind, status=status, reason=reason, message=message, observed_generation=generation
        )
        self.conditions = with_condition(self.conditions, new)


class VMSandboxPool(NamespacedObject):
    """MicroVMs kept ready on nodes, booted or as a snapshot, that sandboxes naming the pool claim."""

    kind: str = POOL_KIND
    spec: VMSandboxPoolSpec = Field(
        default_factory=VMSandboxPoolSpec,
        description="How many members of which shape to keep; written by the pool's author.",
        json_schema_extra={"default": {}},
    )
    status: VMSandboxPoolStatus = Field(
        default_factory=VMSandboxPoolStatus,
        description="What the operator observed. It writes it through the status subresource; status "
        "sent with the object itself is ignored.",
    )


class InvalidPool(InvalidSandbox):
    """A pool whose spec breaks a rule; each problem names its field path."""


def parse_pool(obj: Mapping[str, Any]) -> VMSandboxPool:
    """Validate a raw object; raises :class:`InvalidPool` naming every offending field."""
    return validate_object(VMSandboxPool, obj, InvalidPool)


class PoolReport(APIModel):
    """One pool's entry in an agent's Node annotation ``vmsandbox.io/pools``."""

    uid: str = Field(description="metadata.uid of the pool the members were made for.")
    ready: int = Field(ge=0, le=MAX_REPLICAS, description="Members ready to be claimed on this node.")


def parse_pool_reports(text: str | None) -> dict[str, PoolReport]:
    """The annotation's ``{"<namespace>/<pool>": PoolReport}``; entries that do not parse are dropped.

    The annotation is written by a node's agent; one bad entry must not hide the others.
    """
    try:
        raw = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, PoolReport] = {}
    for key, value in raw.items():
        try:
            out[str(key)] = PoolReport.model_validate(value)
        except ValidationError:
            continue
    return out


def render_pool_reports(reports: Mapping[str, PoolReport]) -> str:
    """The annotation's value, keys sorted so an unchanged report is an unchanged string."""
    return json.dumps({key: reports[key].to_wire() for key in sorted(reports)}, separators=(",", ":"))


def shape_mismatch(
    spec: VMSandboxSpec,
    template: PoolTemplate,
    *,
    node_hypervisor: str | None,
    default_mode: NetworkMode,
    placed_mode: NetworkMode | None = None,
) -> str | None:
    """Why a sandbox cannot be served by the pool's members on a node, or None when it can.

    Both hypervisors fall back to the node's default; both network modes to the placement's mode
    (the sandbox's) and the cluster default (the template's).
    """
    if spec.resources != template.resources:
        ours, theirs = spec.resources, template.resources
        return (
            f"spec.resources ({ours.vcpus} vCPUs, {ours.memory_mib} MiB) differ from the pool's template "
            f"({theirs.vcpus} vCPUs, {theirs.memory_mib} MiB)"
        )
    mine = spec.hypervisor.value if spec.hypervisor else node_hypervisor
    pools = template.hypervisor.value if template.hypervisor else node_hypervisor
    if mine != pools:
        return f"hypervisor {mine} differs from the pool's {pools}"
    mode = _mode_of(spec.network, placed_mode or default_mode)
    pool_mode = _mode_of(template.network, default_mode)
    if mode != pool_mode:
        return f"network mode {mode} differs from the pool's {pool_mode}"
    return None


def _mode_of(network: SandboxNetwork | None, default: NetworkMode) -> NetworkMode:
    return network.mode if network is not None and network.mode is not None else default


__all__ = [
    "MAX_REPLICAS",
    "InvalidPool",
    "PoolCondition",
    "PoolConditionType",
    "PoolMode",
    "PoolNodeStatus",
    "PoolReport",
    "PoolTemplate",
    "VMSandboxPool",
    "VMSandboxPoolSpec",
    "VMSandboxPoolStatus",
    "parse_pool",
    "parse_pool_reports",
    "render_pool_reports",
    "shape_mismatch",
]
