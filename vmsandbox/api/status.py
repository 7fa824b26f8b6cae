"""The observed state of a VMSandbox, written by the operator and the node agent via /status."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, field_serializer

from vmsandbox.api.base import APIModel


class Phase(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    CREATING = "Creating"
    RUNNING = "Running"
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


class Condition(APIModel):
    type: ConditionType
    status: ConditionStatus
    reason: Reason | None = None
    message: Annotated[str, StringConstraints(max_length=32768)] | None = None
    last_transition_time: datetime | None = None
    observed_generation: int | None = Field(default=None, ge=0)


class VMStatus(APIModel):
    id: str | None = None
    vmm_pid: int | None = Field(default=None, alias="vmmPID")


class ContainerStatus(APIModel):
    id: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


def _one_decimal(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)


#: Milliseconds, kept to one decimal: finer digits are clock noise and bloat every status write.
Millis = Annotated[float, Field(ge=0), AfterValidator(_one_decimal)]


class BootTimings(APIModel):
    """Milliseconds per stage, from scheduling to the container's creation."""

    schedule: Millis | None = None
    image: Millis | None = None
    vmm_start: Millis | None = None
    vm_boot: Millis | None = None
    agent_ready: Millis | None = None
    #: agentReady and vmBoot seen from inside the guest (its uptime clock): the kernel's boot up
    #: to /init, then /init up to the guest agent listening. Absent where the agent has no VM.
    kernel_to_init: Millis | None = None
    init_to_agent_ready: Millis | None = None
    container_create: Millis | None = None
    total: Millis | None = None

    @field_serializer("*")
    def _rounded(self, ms: float | None) -> float | None:
        """Rounded again on the way out, since writers may assign a field after validation."""
        return _one_decimal(ms)


class VMSandboxStatus(APIModel):
    phase: Phase | None = None
    reason: Reason | None = None
    message: str | None = None
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    node_name: str | None = None
    hypervisor: str | None = None
    vm: VMStatus | None = None
    container: ContainerStatus | None = None
    restart_count: int | None = Field(default=None, ge=0)
    start_time: datetime | None = None
    observed_generation: int | None = Field(default=None, ge=0)
    boot_timings: BootTimings | None = None

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions or [] if c.type == kind), None)

    def set_condition(
        self,
        kind: ConditionType,
        status: ConditionStatus,
        reason: str | None = None,
        message: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Set a condition, keeping its transition time when the status did not change."""
        old = self.condition(kind)
        changed = old is None or old.status != status
        cond = Condition(
            type=kind,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=now() if changed or old is None else old.last_transition_time,
            observed_generation=generation,
        )
        self.conditions = [c for c in self.conditions or [] if c.type != kind] + [cond]
