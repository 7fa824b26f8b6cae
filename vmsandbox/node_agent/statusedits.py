"""The status changes the node agent makes, as functions of the status they change.

Each returns a :data:`~vmsandbox.node_agent.statuswriter.Mutation`; the worker queues them and
:class:`~vmsandbox.node_agent.statuswriter.SandboxWriter` applies them to the newest copy, so
fields other writers own survive.
"""

from __future__ import annotations

from vmsandbox.api.reasons import StatusReason
from vmsandbox.api.spec import RestartPolicy
from vmsandbox.api.status import ConditionStatus, ConditionType, ContainerStatus, Phase, VMSandboxStatus, now
from vmsandbox.node_agent.records import ContainerEnd
from vmsandbox.node_agent.statuswriter import Mutation

#: Conditions that say whether the sandbox runs.
RUN_CONDITIONS = (ConditionType.VM_READY, ConditionType.CONTAINER_READY, ConditionType.READY)


def unchanged(_status: VMSandboxStatus) -> None:
    """A write of nothing new: sends only the changes still pending."""


def creating(hypervisor: str, generation: int | None, refenced: bool) -> Mutation:
    """Phase Creating as a launch begins (a launch after fencing counts as a restart)."""

    def mutate(status: VMSandboxStatus) -> None:
        if refenced and status.phase is not Phase.CREATING:
            status.restart_count = (status.restart_count or 0) + 1
        status.phase = Phase.CREATING
        status.reason = None
        status.message = None
        status.hypervisor = hypervisor
        status.start_time = status.start_time or now()
        status.observed_generation = generation
        status.restart_count = status.restart_count or 0
        for kind in RUN_CONDITIONS:
            status.set_condition(kind, ConditionStatus.FALSE, "Creating", generation=generation)

    return mutate


def launch_failed(reason: str, message: str, again: bool, generation: int | None) -> Mutation:
    """A launch failed: Creating again after back-off (``again``), else Failed."""

    def mutate(status: VMSandboxStatus) -> None:
        status.phase = Phase.CREATING if again else Phase.FAILED
        status.reason = reason
        status.message = message
        status.observed_generation = generation
        status.set_condition(ConditionType.READY, ConditionStatus.FALSE, reason, message, generation)
        status.set_condition(
            ConditionType.CONTAINER_READY, ConditionStatus.FALSE, reason, generation=generation
        )
        if status.vm is None:
            status.set_condition(ConditionType.VM_READY, ConditionStatus.FALSE, reason, generation=generation)

    return mutate


def deadline_exceeded(message: str) -> Mutation:
    def mutate(status: VMSandboxStatus) -> None:
        status.phase = Phase.FAILED
        status.reason = StatusReason.DEADLINE_EXCEEDED
        status.message = message
        if status.container is not None:
            status.container.finished_at = now()
        for kind in (ConditionType.READY, ConditionType.CONTAINER_READY, ConditionType.VM_READY):
            status.set_condition(kind, ConditionStatus.FALSE, StatusReason.DEADLINE_EXCEEDED, message)

    return mutate


def still_running(status: VMSandboxStatus) -> None:
    """Undo a NodeLost verdict on a sandbox whose container never stopped."""
    if status.phase is Phase.FAILED and status.reason == StatusReason.NODE_LOST:
        status.phase = Phase.RUNNING
        status.reason = None
        status.message = None
        status.set_condition(ConditionType.READY, ConditionStatus.TRUE, "Running")


def ended(end: ContainerEnd, cid: str, policy: RestartPolicy, delay: float) -> Mutation:
    """The status change for a run that ended as ``end`` says (restarting after ``delay``)."""
    failed = end.reason != "Completed"

    def mutate(status: VMSandboxStatus) -> None:
        started = status.container.started_at if status.container else None
        status.container = ContainerStatus(
            id=cid, exit_code=end.exit_code, started_at=started, finished_at=end.finished_at
        )
        status.vm = None
        status.set_condition(ConditionType.VM_READY, ConditionStatus.FALSE, "VMStopped")
        if end.restart:
            status.restart_count = (status.restart_count or 0) + 1
            status.reason = "CrashLoopBackOff" if failed else "Restarting"
            status.message = f"{end.message}; restart {status.restart_count} in {delay:g}s ({policy.value})"
            status.set_condition(ConditionType.CONTAINER_READY, ConditionStatus.FALSE, status.reason)
            status.set_condition(ConditionType.READY, ConditionStatus.FALSE, status.reason, status.message)
        else:
            status.phase = Phase.FAILED if failed else Phase.SUCCEEDED
            status.reason = end.reason
            status.message = end.message
            status.set_condition(ConditionType.CONTAINER_READY, ConditionStatus.FALSE, end.reason)
            status.set_condition(ConditionType.READY, ConditionStatus.FALSE, end.reason, end.message)

    return mutate
