"""What a node agent publishes about its node, so the operator can schedule onto it."""

from __future__ import annotations

from pydantic import Field

from vmsandbox.api.base import APIModel


class NodeCapacity(APIModel):
    """Stored as JSON in the Node annotation ``vmsandbox.io/capacity``."""

    vcpus: int = Field(ge=0, description="vCPUs the agent offers to sandboxes (allocatable).")
    memory_mib: int = Field(ge=0, alias="memoryMiB", description="MiB the agent offers to sandboxes.")
    hypervisors: list[str] = Field(default_factory=list, description="Backends usable on this node.")
    default_hypervisor: str | None = Field(
        default=None, description="Backend for sandboxes that name none; scheduling checks it is offered."
    )
    kvm: bool = Field(default=False, description="Whether /dev/kvm opened read-write on this node.")
    agent_version: str | None = Field(default=None, description="Version of the node agent's package.")
    sandbox_cidr: str | None = Field(
        default=None,
        alias="sandboxCIDR",
        description="The node's sandbox subnet; absent: no sandbox network.",
    )
    sandbox_cidr6: str | None = Field(
        default=None,
        alias="sandboxCIDR6",
        description="The node's IPv6 sandbox prefix (a ULA); absent: sandboxes get IPv4 only.",
    )
