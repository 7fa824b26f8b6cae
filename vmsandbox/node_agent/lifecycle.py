"""What the node agent does next for one sandbox: a pure function of the facts it has gathered.

The worker (:mod:`vmsandbox.node_agent.worker`) reads the latest object, its local record and
the runtime's view of the VM, turns them into the plain facts below, asks :func:`next_step`, and
performs the step it gets back. Nothing here does I/O or reads a clock, so every rule is tested
with a table (``tests/node_agent/test_lifecycle_table.py``) and a clock the test sets.

The agent's local record, not the API's status, says whether a run finished and whether it may
run again: a sandbox whose record holds a final end is reported, never started again, whatever
an older status says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from vmsandbox.api.reasons import StatusReason
from vmsandbox.api.spec import RestartPolicy
from vmsandbox.api.status import Phase
from vmsandbox.node_agent.fencing import RESCHEDULED
from vmsandbox.node_agent.policy import RetryPolicy, backoff_delay, should_restart

#: A run longer than this resets the back-off, as the kubelet does after 10 minutes.
BACKOFF_RESET_SECONDS = 600.0
#: Phases in which a sandbox whose VM vanished while the agent was away had (maybe) run.
MAY_HAVE_RUN = (Phase.RUNNING, Phase.PAUSED, Phase.CREATING)


class VMState(Enum):
    """What the runtime says about the sandbox's container and VM."""

    #: No container in the runtime (none was created, or it is gone without a trace).
    ABSENT = "Absent"
    #: The container runs and its VM is alive.
    RUNNING = "Running"
    #: The container exited with a known exit code.
    EXITED = "Exited"
    #: The runtime knows the container, but its VM died without an exit code.
    LOST = "Lost"


# ---- facts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxFacts:
    """The object as last seen (None passed instead when it is gone or no longer on this node)."""

    phase: Phase | None = None
    reason: str | None = None
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    deleting: bool = False
    has_finalizer: bool = True
    #: Read from the API server just now (not a watch event that may predate the agent's write).
    fresh: bool = False
    #: Why the spec does not parse (None: it does).
    invalid: str | None = None
    #: The operator recorded this node in status.nodeName (a label alone is no placement).
    placed_here: bool = True
    start_time: datetime | None = None
    active_deadline_seconds: int | None = None


@dataclass(frozen=True)
class RunEnd:
    """The record's account of how the last run ended."""

    restart: bool
    exit_code: int | None = 0


@dataclass(frozen=True)
class RecordFacts:
    """The agent's own memory of the sandbox: its record on disk and what the worker holds."""

    finalizer_added: bool = False
    container_created: bool = False
    #: None: written before the field existed, taken as started.
    container_started: bool | None = None
    finished: RunEnd | None = None
    #: Not before this moment is the sandbox launched again (back-off); None: no restart waits.
    restart_at: datetime | None = None
    #: Restarts in a row without a run long enough to reset the back-off.
    consecutive: int = 0
    #: When the current run started (None: no run, or adopted from an earlier agent).
    run_started: datetime | None = None


@dataclass(frozen=True)
class VMFacts:
    state: VMState = VMState.ABSENT
    #: The worker holds the container (it created or adopted it in this process).
    held: bool = False
    exit_code: int | None = None


@dataclass(frozen=True)
class NodeFacts:
    """The agent's settings and node-wide facts."""

    #: The agent has been cut off from the API server long enough to fence (fencing.Fence.due).
    cut_off: bool = False
    poll_seconds: float = 2.0
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 300.0


# ---- steps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forget:
    """Gone, or no longer this node's: tear down, drop the record, stop the worker."""

    why: str


@dataclass(frozen=True)
class Release:
    """Being deleted: tear down, drop the record, remove the agent's finalizer, stop."""


@dataclass(frozen=True)
class Reread:
    """The copy lacks the finalizer the agent added: it may predate that write; read afresh."""


@dataclass(frozen=True)
class Abandon:
    """Someone else removed the agent's finalizer: tear down and never touch the sandbox again."""


@dataclass(frozen=True)
class AddFinalizer:
    pass


@dataclass(frozen=True)
class Reject:
    """The spec does not parse: fail for good."""

    detail: str


@dataclass(frozen=True)
class FinishTeardown:
    """A run's end was recorded but an agent restart cut its teardown short."""


@dataclass(frozen=True)
class ForgetCreate:
    """The record says created but nothing ran: clear it and launch afresh."""


@dataclass(frozen=True)
class Adopt:
    """A VM started by an earlier agent runs on: take it over."""

    wait: float


@dataclass(frozen=True)
class FenceVM:
    """Cut off: stop the VM of a sandbox the operator will run elsewhere."""

    wait: float


@dataclass(frozen=True)
class ReportEnd:
    """The record holds a final end the status does not show yet: write it."""


@dataclass(frozen=True)
class KeepRunning:
    """The container runs: sync spec.paused, correct a NodeLost verdict, look again in ``wait``."""

    wait: float
    #: The operator declared the node lost, yet the container never stopped (restartPolicy Never).
    undo_node_lost: bool = False


@dataclass(frozen=True)
class Exited:
    """The container ended (``exit_code``) or its VM vanished (``lost``)."""

    exit_code: int | None
    lost: bool
    restart: bool
    #: Seconds until the next run (when ``restart``).
    delay: float
    #: Restarts in a row, this one included.
    consecutive: int


@dataclass(frozen=True)
class Deadline:
    """activeDeadlineSeconds passed: stop the run and fail the sandbox for good."""


@dataclass(frozen=True)
class Launch:
    pass


@dataclass(frozen=True)
class Wait:
    """Nothing to do now: look again after ``seconds`` (None: only when the object changes)."""

    seconds: float | None


Step = (
    Forget
    | Release
    | Reread
    | Abandon
    | AddFinalizer
    | Reject
    | FinishTeardown
    | ForgetCreate
    | Adopt
    | FenceVM
    | ReportEnd
    | KeepRunning
    | Exited
    | Deadline
    | Launch
    | Wait
)

IDLE = Wait(None)


# ---- decisions -------------------------------------------------------------------------------


def next_step(
    sandbox: SandboxFacts | None,
    record: RecordFacts,
    vm: VMFacts,
    now: datetime,
    node: NodeFacts | None = None,
) -> Step:
    """The one thing to do next for a sandbox; the worker performs it and asks again."""
    node = node or NodeFacts()
    if sandbox is None:
        return Forget("the sandbox is gone or no longer scheduled to this node")
    if sandbox.deleting:
        return Release()
    if not sandbox.has_finalizer:
        if record.finalizer_added:
            return Abandon() if sandbox.fresh else Reread()
        return AddFinalizer()
    if sandbox.invalid is not None:
        return Reject(sandbox.invalid)
    if record.container_created and not vm.held:
        return _adopt(sandbox, record, vm, node)
    if node.cut_off:
        return _cut_off(sandbox, record, vm, now, node)
    if record.finished is not None and not record.finished.restart and not vm.held:
        return ReportEnd() if sandbox.phase is None or not sandbox.phase.finished else IDLE
    if vm.held:
        return _monitor(sandbox, record, vm, now, node)
    return _maybe_launch(sandbox, record, now)


def _adopt(sandbox: SandboxFacts, record: RecordFacts, vm: VMFacts, node: NodeFacts) -> Step:
    """The record says a container was created, and this worker does not hold it (agent restart)."""
    if record.finished is not None:
        return FinishTeardown()
    if vm.state is VMState.RUNNING:
        return Adopt(node.poll_seconds)
    if vm.state is VMState.ABSENT:
        if record.container_started is False or sandbox.phase not in MAY_HAVE_RUN:
            return ForgetCreate()
        return _exited(sandbox, record, None, True, None, node)
    return _exited(sandbox, record, vm.exit_code, vm.state is VMState.LOST, None, node)


def _cut_off(sandbox: SandboxFacts, record: RecordFacts, vm: VMFacts, now: datetime, node: NodeFacts) -> Step:
    """Start nothing; stop what the operator will run elsewhere; keep watching what stays."""
    if sandbox.restart_policy not in RESCHEDULED:
        return _monitor(sandbox, record, vm, now, node) if vm.held else Wait(node.poll_seconds)
    if not vm.held and not record.container_created:
        return Wait(node.poll_seconds)
    return FenceVM(node.poll_seconds)


def _monitor(sandbox: SandboxFacts, record: RecordFacts, vm: VMFacts, now: datetime, node: NodeFacts) -> Step:
    wait = node.poll_seconds
    left = deadline_left(sandbox, now)
    if left is not None:
        if left <= 0:
            return Deadline()
        wait = min(wait, left)
    if vm.state is VMState.RUNNING:
        lost = sandbox.phase is Phase.FAILED and sandbox.reason == StatusReason.NODE_LOST
        return KeepRunning(wait, undo_node_lost=lost)
    lost = vm.state is not VMState.EXITED
    return _exited(sandbox, record, None if lost else vm.exit_code, lost, now, node)


def _maybe_launch(sandbox: SandboxFacts, record: RecordFacts, now: datetime) -> Step:
    if sandbox.phase is not None and sandbox.phase.finished and record.restart_at is None:
        return IDLE
    if record.restart_at is not None and now < record.restart_at:
        return Wait((record.restart_at - now).total_seconds())
    if not sandbox.placed_here:
        return IDLE
    return Launch()


def deadline_left(sandbox: SandboxFacts, now: datetime) -> float | None:
    """Seconds until activeDeadlineSeconds ends the run (None: no deadline, or not started)."""
    if sandbox.active_deadline_seconds is None or sandbox.start_time is None:
        return None
    end = sandbox.start_time + timedelta(seconds=sandbox.active_deadline_seconds)
    return (end - now).total_seconds()


def _exited(
    sandbox: SandboxFacts,
    record: RecordFacts,
    exit_code: int | None,
    lost: bool,
    now: datetime | None,
    node: NodeFacts,
) -> Exited:
    """A container that ran and ended restarts on the node's own back-off whatever the cause
    (CrashLoopBackOff); only a launch that failed has a kind to choose its delay."""
    failed = lost or exit_code != 0
    restart = should_restart(sandbox.restart_policy, failed)
    ran = (now - record.run_started).total_seconds() if now and record.run_started else 0.0
    consecutive = 0 if ran > BACKOFF_RESET_SECONDS else record.consecutive
    delay = 0.0
    if restart:
        consecutive += 1
        delay = backoff_delay(consecutive, node.backoff_seconds, node.backoff_max_seconds)
    return Exited(exit_code, lost, restart, delay, consecutive)


@dataclass(frozen=True)
class Retry:
    """A failed launch is tried again after ``delay`` seconds."""

    delay: float
    consecutive: int


@dataclass(frozen=True)
class GiveUp:
    """A failed launch is final: the sandbox fails."""


def after_launch_failure(
    policy: RestartPolicy, retry: RetryPolicy | None, consecutive: int, node: NodeFacts
) -> Retry | GiveUp:
    """Whether a launch that failed is tried again, and when: ``retry`` is the failure kind's
    policy (None: retrying cannot help), scaled and capped by the node's back-off; restartPolicy
    Never never retries."""
    if retry is None or policy is RestartPolicy.NEVER:
        return GiveUp()
    consecutive += 1
    return Retry(retry.delay(consecutive, node.backoff_seconds, node.backoff_max_seconds), consecutive)
