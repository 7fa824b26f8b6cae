"""The observed state of a VMSandbox, written by the operator and the node agent via /status."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, Field, StringConstraints, field_serializer

from vmsandbox.api.base import APIModel
from vmsandbox.api.network import NetworkStatus


class Phase(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    CREATING = "Creating"
    RUNNING = "Running"
    #: Running, with the VM paused because spec.paused is true.
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TERMINATING = "Terminating"
    UNKNOWN = "Unknown"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(StrEnum):
    SCHEDULED = "Scheduled"
    VM_READY = "VMReady"
    CONTAINER_READY = "ContainerReady"
    READY = "Ready"
    WARM_START = "WarmStart"
    PAUSED = "Paused"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


#: Kubernetes' rule for a condition reason (CamelCase word).
Reason = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
]


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class KubeCondition(APIModel):
    """The Kubernetes condition shape, shared by the sandbox's and the pool's conditions.

    Each object's subclass narrows ``type`` to its condition types and describes ``reason`` and
    ``observedGeneration`` for its object (:func:`reason_field`, :func:`generation_field`).
    """

    type: str
    status: ConditionStatus = Field(description="Whether the condition holds: True, False or Unknown.")
    reason: Reason | None = None
    message: Annotated[str, StringConstraints(max_length=32768)] | None = Field(
        default=None, description="Human-readable detail of the reason."
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed (RFC 3339, whole seconds)."
    )
    observed_generation: int | None = Field(default=None, ge=0)


def reason_field(examples: str) -> Any:
    """A condition's ``reason``, described with the reasons its object's conditions give."""
    return Field(
        default=None, description=f"Why the condition last changed, as one CamelCase word ({examples})."
    )


def generation_field(noun: str) -> Any:
    """A condition's ``observedGeneration``, described for its object (``noun``)."""
    return Field(
        default=None, ge=0, description=f"The metadata.generation of the {noun} the condition was set for."
    )


C = TypeVar("C", bound=KubeCondition)


#: An object's conditions: the latest observation of each type, listed as a map keyed by type.
ConditionList = Annotated[
    list[C] | None,
    Field(
        description="The latest observation of each condition type, at most one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


def find_condition(conditions: list[C] | None, kind: str) -> C | None:
    return next((c for c in conditions or [] if c.type == kind), None)


def with_condition(conditions: list[C] | None, new: C) -> list[C]:
    """``conditions`` with ``new`` in place of its type's entry, keeping the transition time when the
    status did not change."""
    old = find_condition(conditions, new.type)
    new.last_transition_time = (
        old.last_transition_time if old is not None and old.status == new.status else now()
    )
    return [c for c in conditions or [] if c.type != new.type] + [new]


class Condition(KubeCondition):
    """One observation of the sandbox, in the Kubernetes condition shape."""

    type: ConditionType = Field(
        description="What is observed: Scheduled (a node was chosen), VMReady (the VM booted), "
        "ContainerReady (the container started), Ready (the sandbox is running), WarmStart (whether a "
        "sandbox with spec.pool was served by a pool member or started cold, and why), Paused (its VM "
        "is paused, following spec.paused)."
    )
    reason: Reason | None = reason_field("e.g. Creating, Booted, Started, NodeLost")
    observed_generation: int | None = generation_field("sandbox")


class VMStatus(APIModel):
    """The sandbox's running VM on its node."""

    id: str | None = Field(default=None, description="Identifier of the VM on its node.")
    vmm_pid: int | None = Field(
        default=None,
        alias="vmmPID",
        description="Process ID on the node of the VM's monitor: the cloud-hypervisor or qemu process, "
        "or the guest agent's process for the process backend.",
    )


class ContainerStatus(APIModel):
    """The sandbox's container, from its latest start to its exit."""

    id: str | None = Field(default=None, description="Container ID in vmsandbox-runtime on the node.")
    pid: int | None = Field(
        default=None,
        description="Process ID on the node of the runtime's relay for the container, which lives as "
        "long as the container runs.",
    )
    exit_code: int | None = Field(
        default=None,
        description="The container's exit code; absent while it runs and when it did not exit by itself "
        "(VM lost, deadline exceeded).",
    )
    started_at: datetime | None = Field(default=None, description="When the container started (RFC 3339).")
    finished_at: datetime | None = Field(
        default=None,
        description="When the container exited or was stopped (RFC 3339); ttlSecondsAfterFinished counts "
        "from here.",
    )


def _one_decimal(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)


#: Milliseconds, kept to one decimal: finer digits are clock noise and bloat every status write.
Millis = Annotated[float, Field(ge=0), AfterValidator(_one_decimal)]


class BootTimings(APIModel):
    """Milliseconds per stage of the latest start, from scheduling to the container's creation."""

    schedule: Millis | None = Field(
        default=None,
        description="Milliseconds from the operator first seeing the sandbox to its placement being "
        "recorded.",
    )
    image: Millis | None = Field(
        default=None,
        description="Milliseconds the node agent spent pulling and unpacking the image (little when cached).",
    )
    vmm_start: Millis | None = Field(
        default=None, description="Milliseconds from starting the VM's monitor until its API answered."
    )
    vm_boot: Millis | None = Field(
        default=None,
        description="Milliseconds from the monitor's API answering until the guest had booted.",
    )
    agent_ready: Millis | None = Field(
        default=None,
        description="Milliseconds from the guest's boot until its agent accepted a connection.",
    )
    kernel_to_init: Millis | None = Field(
        default=None,
        description="Milliseconds from the guest kernel's start to /init, on the guest's own clock "
        "(uptime). Absent for the process backend, which boots no kernel.",
    )
    init_to_agent_ready: Millis | None = Field(
        default=None,
        description="Milliseconds from /init to the guest agent listening, on the guest's own clock. "
        "Absent for the process backend.",
    )
    container_create: Millis | None = Field(
        default=None, description="Milliseconds the guest agent spent creating the container."
    )
    network: Millis | None = Field(
        default=None,
        description="Milliseconds the node agent spent setting up the sandbox's network (address, links, "
        "egress rules).",
    )
    claim: Millis | None = Field(
        default=None,
        description="Milliseconds from the node agent taking up the sandbox to a pool member being handed "
        "over to it (identity set, container disk attached). Absent for a cold start.",
    )
    restore: Millis | None = Field(
        default=None,
        description="Milliseconds spent restoring the member's VM from its pool's snapshot (snapshot "
        "pools only); part of claim.",
    )
    total: Millis | None = Field(
        default=None,
        description="Milliseconds of schedule plus those from the node agent taking up the sandbox to "
        "the container's start; bundle building and status writes fall between the stages above.",
    )

    @field_serializer("*")
    def _rounded(self, ms: float | None) -> float | None:
        """Rounded again on the way out, since writers may assign a field after validation."""
        return _one_decimal(ms)


class VMSandboxStatus(APIModel):
    """What the operator and the node agent observed, written through the status subresource."""

    phase: Phase | None = Field(
        default=None,
        description="Where the sandbox is in its life: Pending (not on a node yet), Scheduled (a node was "
        "chosen), Creating (image, VM and container being made, or a retry waiting), Running, Paused "
        "(running, with the VM paused by spec.paused), Succeeded "
        "or Failed (finished; see reason), Unknown (its node's agent stopped renewing its Lease). "
        "Terminating is reserved and not written.",
    )
    reason: Reason | None = Field(
        default=None,
        description="Why the sandbox is in its phase, as one CamelCase word (e.g. Unschedulable, Invalid, "
        "ImagePullFailed, CrashLoopBackOff, DeadlineExceeded, NodeLost, Completed, Error).",
    )
    message: str | None = Field(
        default=None, description="Human-readable detail of the reason, naming the field or step at fault."
    )
    conditions: ConditionList[Condition] = None
    node_name: str | None = Field(
        default=None,
        description="Node the operator placed the sandbox on; the label vmsandbox.io/node carries it too.",
    )
    hypervisor: str | None = Field(
        default=None,
        description="Backend running the VM: spec.hypervisor, or the node's default when the spec has none.",
    )
    vm: VMStatus | None = Field(
        default=None,
        description="The VM last booted for the sandbox; cleared when its container exits or the sandbox "
        "is rescheduled.",
    )
    container: ContainerStatus | None = Field(
        default=None, description="The sandbox's container, from its latest start to its exit."
    )
    restart_count: int | None = Field(
        default=None,
        ge=0,
        description="Times the container was restarted on its node or the sandbox was rescheduled after "
        "its node was lost.",
    )
    start_time: datetime | None = Field(
        default=None,
        description="When the node agent first began creating the sandbox (RFC 3339); "
        "activeDeadlineSeconds counts from here.",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation of the sandbox the node agent last acted on."
    )
    boot_timings: BootTimings | None = Field(
        default=None,
        description="Milliseconds per stage of the latest start, from scheduling to the container's "
        "creation.",
    )
    network: NetworkStatus | None = Field(
        default=None,
        description="The sandbox's network as the node agent set it up; absent when its node runs no "
        "sandbox network.",
    )

    def condition(self, kind: ConditionType) -> Condition | None:
        return find_condition(self.conditions, kind)

    def set_condition(
        self,
        kind: ConditionType,
        status: ConditionStatus,
        reason: str | None = None,
        message: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Set a condition, keeping its transition time when the status did not change."""
        new = Condition(
            type=kind, status=status, reason=reason, message=message, observed_generation=generation
        )
        self.conditions = with_condition(self.conditions, new)
