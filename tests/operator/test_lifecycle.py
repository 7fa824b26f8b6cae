"""Node loss, rescheduling, TTL and deletion decisions, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.operator.factories import sandbox_obj
from vmsandbox.api import VMSandbox
from vmsandbox.api.constants import AGENT_FINALIZER, NODE_LABEL, OPERATOR_FINALIZER
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.lifecycle import Action, next_step

CONFIG = OperatorConfig(agent_alive_seconds=40, node_lost_grace_seconds=60)


def sb(
    *,
    node: str | None = "n1",
    phase: str | None = "Running",
    reason: str | None = None,
    finalizers: tuple[str, ...] = (OPERATOR_FINALIZER,),
    deleting: bool = False,
    **spec: Any,
) -> VMSandbox:
    obj = sandbox_obj(**spec)
    meta = obj["metadata"]
    if node:
        meta["labels"] = {NODE_LABEL: node}
    meta["finalizers"] = list(finalizers)
    if deleting:
        meta["deletionTimestamp"] = datetime.now(UTC).isoformat()
    obj["status"] = {k: v for k, v in {"phase": phase, "reason": reason, "nodeName": node}.items() if v}
    return VMSandbox.model_validate(obj)


def step(s: VMSandbox, silence: float | None = 1.0, finished_for: float | None = None):  # type: ignore[no-untyped-def]
    return next_step(s, silence=silence, finished_for=finished_for, config=CONFIG)


def test_healthy_running_sandbox_needs_nothing() -> None:
    assert step(sb()).action is Action.NONE


def test_silent_agent_goes_unknown_then_node_lost() -> None:
    unknown = step(sb(), silence=45)
    assert unknown.action is Action.MARK_UNKNOWN and "45s" in unknown.message
    assert unknown.recheck is not None and 15 <= unknown.recheck <= 16  # look again when the grace ends
    assert step(sb(phase="Unknown", reason="NodeUnreachable"), silence=50).action is Action.NONE
    lost = step(sb(phase="Unknown", reason="NodeUnreachable"), silence=61)
    assert lost.action is Action.MARK_NODE_LOST and "grace 60s" in lost.message


def test_agent_back_before_the_grace_recovers() -> None:
    assert step(sb(phase="Unknown", reason="NodeUnreachable"), silence=3).action is Action.RECOVER


def test_node_lost_reschedules_by_restart_policy() -> None:
    for policy in ("OnFailure", "Always"):
        lost = sb(phase="Failed", reason="NodeLost", restartPolicy=policy)
        assert step(lost, silence=100).action is Action.RESCHEDULE
    never = sb(phase="Failed", reason="NodeLost", restartPolicy="Never")
    assert step(never, silence=100).action is Action.NONE
    other_failure = sb(phase="Failed", reason="ContainerFailed", restartPolicy="Always")
    assert step(other_failure).action is Action.NONE


def test_finished_sandboxes_are_not_failed_by_node_loss() -> None:
    assert step(sb(phase="Succeeded"), silence=1000).action is Action.NONE


def test_ttl_after_finished() -> None:
    done = sb(phase="Succeeded", ttlSecondsAfterFinished=30)
    early = step(done, finished_for=10)
    assert early.action is Action.NONE and early.recheck == 20
    assert step(done, finished_for=30).action is Action.DELETE_EXPIRED
    assert step(sb(phase="Succeeded"), finished_for=10_000).action is Action.NONE  # no TTL: kept


def test_deletion_waits_for_the_agent_then_releases() -> None:
    both = (OPERATOR_FINALIZER, AGENT_FINALIZER)
    wait = step(sb(deleting=True, finalizers=both), silence=5)
    assert wait.action is Action.WAIT_FOR_AGENT and wait.recheck is not None and wait.recheck > 50
    assert step(sb(deleting=True), silence=5).action is Action.RELEASE
    assert step(sb(deleting=True, finalizers=()), silence=5).action is Action.NONE


def test_deletion_on_a_lost_node_releases_both_after_the_grace() -> None:
    both = (OPERATOR_FINALIZER, AGENT_FINALIZER)
    assert step(sb(deleting=True, finalizers=both), silence=59).action is Action.WAIT_FOR_AGENT
    assert step(sb(deleting=True, finalizers=both), silence=61).action is Action.FORCE_RELEASE


def test_unscheduled_pending_sandbox_is_left_to_the_scheduler() -> None:
    assert step(sb(node=None, phase="Pending"), silence=None).action is Action.NONE
