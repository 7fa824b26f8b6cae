"""What happens to a sandbox after it is scheduled: node loss, rescheduling, TTL, deletion.

A pure function of the sandbox, how long its node's agent has been silent and how long it has
been finished, so every rule is tested without a cluster; the reconciler performs the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vmsandbox.api import Phase, RestartPolicy, VMSandbox, reasons
from vmsandbox.api.constants import AGENT_FINALIZER, NODE_LABEL, OPERATOR_FINALIZER
from vmsandbox.operator.config import OperatorConfig

#: ``status.reason`` values the operator writes.
REASON_NODE_UNREACHABLE = "NodeUnreachable"
REASON_NODE_LOST = "NodeLost"
REASON_INVALID = reasons.INVALID
REASON_UNSCHEDULABLE = "Unschedulable"
REASON_SCHEDULED = "Scheduled"


class Action(StrEnum):
    NONE = "None"
    WAIT_FOR_AGENT = "WaitForAgent"  # deletion: the agent still holds its finalizer
    RELEASE = "Release"  # deletion: remove the operator's finalizer
    FORCE_RELEASE = "ForceRelease"  # deletion on a lost node: remove both finalizers
    MARK_UNKNOWN = "MarkUnknown"
    RECOVER = "Recover"  # the agent is back before the node was declared lost
    MARK_NODE_LOST = "MarkNodeLost"
    RESCHEDULE = "Reschedule"
    DELETE_EXPIRED = "DeleteExpired"  # ttlSecondsAfterFinished has passed


@dataclass(frozen=True)
class Step:
    action: Action
    message: str = ""
    #: Seconds after which the same sandbox should be looked at again, if nothing else happens.
    recheck: float | None = None


def node_of(sandbox: VMSandbox) -> str | None:
    return (sandbox.metadata.labels or {}).get(NODE_LABEL) or None


def next_step(
    sandbox: VMSandbox,
    *,
    silence: float | None,
    finished_for: float | None,
    config: OperatorConfig,
) -> Step:
    """The one thing to do next.

    ``silence``: seconds since the agent of the sandbox's node last renewed its Lease (None
    when the sandbox is on no node). ``finished_for``: seconds since it finished (None when it
    has not).
    """
    node = node_of(sandbox)
    grace = config.node_lost_grace_seconds
    finalizers = sandbox.metadata.finalizers or []
    if sandbox.metadata.deletion_timestamp is not None:
        if OPERATOR_FINALIZER not in finalizers:
            return Step(Action.NONE)
        if AGENT_FINALIZER not in finalizers or node is None:
            return Step(Action.RELEASE)
        if silence is not None and silence > grace:
            return Step(
                Action.FORCE_RELEASE, f"node {node} lost for {silence:.0f}s; releasing without its agent"
            )
        left = grace - (silence or 0.0)
        return Step(Action.WAIT_FOR_AGENT, recheck=max(left, 0.0) + 0.1)

    status = sandbox.status
    phase = status.phase
    if phase is not None and phase.finished:
        if (
            phase is Phase.FAILED
            and status.reason == REASON_NODE_LOST
            and sandbox.spec.restart_policy in (RestartPolicy.ON_FAILURE, RestartPolicy.ALWAYS)
        ):
            lost = node or status.node_name
            return Step(
                Action.RESCHEDULE, f"node {lost} lost; restartPolicy {sandbox.spec.restart_policy.value}"
            )
        ttl = sandbox.spec.ttl_seconds_after_finished
        if ttl is not None and finished_for is not None:
            if finished_for >= ttl:
                return Step(
                    Action.DELETE_EXPIRED, f"finished {finished_for:.0f}s ago; ttlSecondsAfterFinished={ttl}"
                )
            return Step(Action.NONE, recheck=ttl - finished_for)
        return Step(Action.NONE)

    if node is None or silence is None:
        return Step(Action.NONE)
    if silence > grace:
        return Step(
            Action.MARK_NODE_LOST,
            f"the agent of node {node} has not renewed its Lease for {silence:.0f}s (grace {grace:.0f}s)",
        )
    if silence > config.agent_alive_seconds:
        if phase is Phase.UNKNOWN:
            return Step(Action.NONE, recheck=grace - silence + 0.1)
        return Step(
            Action.MARK_UNKNOWN,
            f"the agent of node {node} has not renewed its Lease for {silence:.0f}s",
            recheck=grace - silence + 0.1,
        )
    if phase is Phase.UNKNOWN and status.reason == REASON_NODE_UNREACHABLE:
        return Step(Action.RECOVER, f"the agent of node {node} is back")
    return Step(Action.NONE)
