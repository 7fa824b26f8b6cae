"""``spec.paused``: the node agent pauses or resumes a running sandbox's VM to match it.

The runtime's record says whether the VM is paused (it survives an agent restart); the status
says what the agent last reported. Each poll of a running sandbox brings both in line with the
spec: act on the VM when the record differs, write phase and condition when the status does.
A failure is reported (condition Paused with reason PauseFailed) and retried at the next poll.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmsandbox.api import VMSandbox, VMSandboxStatus
from vmsandbox.api.reasons import PauseReason
from vmsandbox.api.status import ConditionStatus, ConditionType, Phase
from vmsandbox.errors import VMSandboxError
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.errors import NotFound

Write = Callable[[dict[str, Any], Callable[[VMSandboxStatus], None]], dict[str, Any]]
Event = Callable[[dict[str, Any], str, str, bool], None]


def vm_paused(runtime: Runtime, container_id: str) -> bool:
    try:
        return runtime.store.load(container_id).paused
    except NotFound:
        return False


def sync(
    runtime: Runtime, container_id: str, obj: dict[str, Any], sandbox: VMSandbox, write: Write, event: Event
) -> dict[str, Any]:
    """Pause or resume the VM of a running sandbox as ``spec.paused`` says; returns the object
    as last written (``obj`` when nothing was)."""
    want = sandbox.spec.paused
    generation = obj["metadata"].get("generation")
    if vm_paused(runtime, container_id) != want:
        try:
            (runtime.pause if want else runtime.resume)(container_id)
        except VMSandboxError as exc:
            message = f"could not {'pause' if want else 'resume'} the VM: {exc}"

            def failed(status: VMSandboxStatus) -> None:
                status.set_condition(
                    ConditionType.PAUSED,
                    ConditionStatus.UNKNOWN,
                    PauseReason.PAUSE_FAILED,
                    message,
                    generation,
                )

            event(obj, PauseReason.PAUSE_FAILED, message, True)
            return write(obj, failed)
        reason = PauseReason.PAUSED if want else PauseReason.RESUMED
        event(obj, reason, "VM paused" if want else "VM resumed", False)
    reported = sandbox.status.phase is Phase.PAUSED
    condition = sandbox.status.condition(ConditionType.PAUSED)
    if want:
        settled = reported and condition is not None and condition.status is ConditionStatus.TRUE
    else:
        settled = not reported and (condition is None or condition.status is ConditionStatus.FALSE)
    if settled:
        return obj

    def mark(status: VMSandboxStatus) -> None:
        status.phase = Phase.PAUSED if want else Phase.RUNNING
        status.set_condition(
            ConditionType.PAUSED,
            ConditionStatus.TRUE if want else ConditionStatus.FALSE,
            PauseReason.PAUSED if want else PauseReason.RESUMED,
            "the VM is paused (spec.paused)" if want else "the VM runs",
            generation,
        )

    return write(obj, mark)
