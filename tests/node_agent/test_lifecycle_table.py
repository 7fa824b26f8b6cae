"""The agent's lifecycle decisions (vmsandbox.node_agent.lifecycle), without a cluster or a clock.

Every combination of phase, restart policy, record state and VM state is checked against the
table below; the cases around it (deletion, finalizers, fencing, deadlines, back-off) have
their own rows, with a clock the test moves by hand.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from vmsandbox.api.reasons import StatusReason
from vmsandbox.api.spec import RestartPolicy
from vmsandbox.api.status import Phase
from vmsandbox.node_agent import errors
from vmsandbox.node_agent.admission import OutOfCapacity
from vmsandbox.node_agent.lifecycle import (
    IDLE,
    Abandon,
    AddFinalizer,
    Adopt,
    Deadline,
    Exited,
    FenceVM,
    FinishTeardown,
    Forget,
    ForgetCreate,
    GiveUp,
    KeepRunning,
    Launch,
    NodeFacts,
    RecordFacts,
    Reject,
    Release,
    ReportEnd,
    Reread,
    Retry,
    RunEnd,
    SandboxFacts,
    Step,
    VMFacts,
    VMState,
    Wait,
    after_launch_failure,
    next_step,
)
from vmsandbox.node_agent.network.errors import AddressesExhausted, NetworkError
from vmsandbox.node_agent.policy import NODE_BACKOFF

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NODE = NodeFacts(poll_seconds=2.0, backoff_seconds=10.0, backoff_max_seconds=300.0)
PHASES = [None, *Phase]
POLICIES = list(RestartPolicy)

# ---- the record states the agent can meet -------------------------------------------------------

RECORDS = {
    "none": RecordFacts(),
    "finalizer": RecordFacts(finalizer_added=True),
    "creating": RecordFacts(finalizer_added=True, container_created=True, container_started=False),
    "started": RecordFacts(finalizer_added=True, container_created=True, container_started=True),
    "legacy-created": RecordFacts(finalizer_added=True, container_created=True, container_started=None),
    "ended-final": RecordFacts(finalizer_added=True, finished=RunEnd(restart=False, exit_code=0)),
    "ended-final-torn": RecordFacts(
        finalizer_added=True, container_created=True, finished=RunEnd(restart=False, exit_code=3)
    ),
    "restart-waiting": RecordFacts(
        finalizer_added=True,
        finished=RunEnd(restart=True, exit_code=1),
        restart_at=T0 + timedelta(seconds=7),
        consecutive=1,
    ),
    "restart-due": RecordFacts(
        finalizer_added=True,
        finished=RunEnd(restart=True, exit_code=1),
        restart_at=T0 - timedelta(seconds=1),
        consecutive=1,
    ),
    "restart-after-agent-restart": RecordFacts(finalizer_added=True, finished=RunEnd(restart=True)),
}

VMS = {
    "absent": VMFacts(VMState.ABSENT),
    "running": VMFacts(VMState.RUNNING),
    "exited-0": VMFacts(VMState.EXITED, exit_code=0),
    "exited-1": VMFacts(VMState.EXITED, exit_code=1),
    "lost": VMFacts(VMState.LOST),
    "held-running": VMFacts(VMState.RUNNING, held=True),
    "held-exited-0": VMFacts(VMState.EXITED, held=True, exit_code=0),
    "held-exited-1": VMFacts(VMState.EXITED, held=True, exit_code=1),
    "held-lost": VMFacts(VMState.LOST, held=True),
    "held-absent": VMFacts(VMState.ABSENT, held=True),
}


@dataclass(frozen=True)
class Ends:
    """An Exited step: the exit code it reports, whether the VM was lost."""

    exit_code: int | None
    lost: bool


LAUNCH, ADOPT, KEEP, REPORT, TEARDOWN, FRESH = "launch", "adopt", "keep", "report", "teardown", "fresh"
IDLE_, WAIT_BACKOFF = "idle", "wait-backoff"


def _vm_outcome(vm: str) -> str | Ends:
    """What a container in this VM state means once the agent looks at it."""
    name = vm.removeprefix("held-")
    if name == "running":
        return ADOPT if vm == name else KEEP
    if name.startswith("exited-"):
        return Ends(int(name.rsplit("-", 1)[1]), lost=False)
    return Ends(None, lost=True)


def expected(phase: Phase | None, record: str, vm: str) -> str | Ends:
    """The table: what the agent does for each record and VM state (and phase where it matters)."""
    facts, held = RECORDS[record], vm.startswith("held-")
    if facts.container_created and not held:
        if facts.finished is not None:
            return TEARDOWN
        if vm == "absent":
            may_have_run = phase in (Phase.RUNNING, Phase.PAUSED, Phase.CREATING)
            return Ends(None, lost=True) if record != "creating" and may_have_run else FRESH
        return _vm_outcome(vm)
    if facts.finished is not None and not facts.finished.restart and not held:
        return IDLE_ if phase is not None and phase.finished else REPORT
    if held:
        return _vm_outcome(vm)
    if phase is not None and phase.finished and facts.restart_at is None:
        return IDLE_
    if record == "restart-waiting":
        return WAIT_BACKOFF
    return LAUNCH


def _kind(step: Step) -> str | Ends:
    kinds: dict[type, str] = {
        Launch: LAUNCH,
        Adopt: ADOPT,
        KeepRunning: KEEP,
        ReportEnd: REPORT,
        FinishTeardown: TEARDOWN,
        ForgetCreate: FRESH,
    }
    if isinstance(step, Exited):
        return Ends(step.exit_code, step.lost)
    if step == IDLE:
        return IDLE_
    if isinstance(step, Wait):
        return WAIT_BACKOFF
    return kinds[type(step)]


COMBINATIONS = list(itertools.product(PHASES, POLICIES, RECORDS, VMS))


@pytest.mark.parametrize(("phase", "policy", "record", "vm"), COMBINATIONS)
def test_every_phase_policy_record_and_vm_state(
    phase: Phase | None, policy: RestartPolicy, record: str, vm: str
) -> None:
    sandbox = SandboxFacts(phase=phase, restart_policy=policy)
    step = next_step(sandbox, RECORDS[record], VMS[vm], T0, NODE)
    want = expected(phase, record, vm)
    assert _kind(step) == want
    if isinstance(step, Exited):
        failed = step.lost or step.exit_code != 0
        restarts = policy is RestartPolicy.ALWAYS or (policy is RestartPolicy.ON_FAILURE and failed)
        assert step.restart is restarts
        assert step.delay == (10.0 * 2 ** (step.consecutive - 1) if restarts else 0.0)
    if isinstance(step, Wait) and step != IDLE:
        assert step.seconds == 7.0
    if isinstance(step, (Adopt, KeepRunning)):
        assert step in (Adopt(2.0), KeepRunning(2.0))


FINAL_ENDS = [c for c in COMBINATIONS if (end := RECORDS[c[2]].finished) is not None and not end.restart]


@pytest.mark.parametrize(("phase", "policy", "record", "vm"), FINAL_ENDS)
def test_a_final_end_in_the_record_is_never_run_again(
    phase: Phase | None, policy: RestartPolicy, record: str, vm: str
) -> None:
    """Whatever the status says (an old Running, a Scheduled from a stale copy), a run the record
    holds as finished for good is reported, never launched again."""
    step = next_step(SandboxFacts(phase=phase, restart_policy=policy), RECORDS[record], VMS[vm], T0, NODE)
    assert not isinstance(step, (Launch, ForgetCreate))


# ---- the object's own state comes first ---------------------------------------------------------


@pytest.mark.parametrize("record", RECORDS)
@pytest.mark.parametrize("vm", VMS)
def test_gone_deleted_and_finalizer_states_come_before_everything(record: str, vm: str) -> None:
    facts, state = RECORDS[record], VMS[vm]
    assert isinstance(next_step(None, facts, state, T0, NODE), Forget)
    assert next_step(SandboxFacts(deleting=True), facts, state, T0, NODE) == Release()
    assert next_step(SandboxFacts(deleting=True, has_finalizer=False), facts, state, T0, NODE) == Release()
    unfinalized = SandboxFacts(has_finalizer=False)
    fresh = replace(unfinalized, fresh=True)
    if facts.finalizer_added:
        # A watch event from before the agent's patch lacks the finalizer too: read afresh first.
        assert next_step(unfinalized, facts, state, T0, NODE) == Reread()
        assert next_step(fresh, facts, state, T0, NODE) == Abandon()
    else:
        assert next_step(unfinalized, facts, state, T0, NODE) == AddFinalizer()
        assert next_step(fresh, facts, state, T0, NODE) == AddFinalizer()
    cut_off = replace(NODE, cut_off=True)
    assert next_step(SandboxFacts(deleting=True), facts, state, T0, cut_off) == Release()


@pytest.mark.parametrize("record", ["none", "finalizer", "started"])
def test_an_invalid_spec_is_rejected(record: str) -> None:
    sandbox = SandboxFacts(invalid="spec.image: must not be empty")
    step = next_step(sandbox, RECORDS[record], VMS["absent"], T0, NODE)
    assert step == Reject("spec.image: must not be empty")


@pytest.mark.parametrize("phase", [Phase.SCHEDULED, Phase.PENDING, None])
def test_only_the_operators_placement_launches(phase: Phase | None) -> None:
    """A node label a tenant set is not a placement until status.nodeName names this node."""
    sandbox = SandboxFacts(phase=phase, placed_here=False)
    assert next_step(sandbox, RECORDS["finalizer"], VMS["absent"], T0, NODE) == IDLE
    assert (
        next_step(replace(sandbox, placed_here=True), RECORDS["finalizer"], VMS["absent"], T0, NODE)
        == Launch()
    )


# ---- fencing ------------------------------------------------------------------------------------

CUT_OFF = replace(NODE, cut_off=True)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("record", ["none", "finalizer", "started", "restart-due", "ended-final"])
@pytest.mark.parametrize("vm", ["absent", "held-running", "held-exited-1"])
def test_a_cut_off_agent_starts_nothing_and_fences_what_is_rescheduled(
    policy: RestartPolicy, record: str, vm: str
) -> None:
    sandbox = SandboxFacts(phase=Phase.RUNNING, restart_policy=policy)
    facts, state = RECORDS[record], VMS[vm]
    step = next_step(sandbox, facts, state, T0, CUT_OFF)
    assert not isinstance(step, Launch)
    if facts.container_created and not state.held:
        # Adoption first: a VM an earlier agent left is taken over (or its end noticed), then fenced.
        assert step == next_step(sandbox, facts, state, T0, NODE)
    elif policy is RestartPolicy.NEVER:
        # Never rescheduled elsewhere: it keeps running, and its end is still noticed.
        if state.held:
            assert step == next_step(sandbox, facts, state, T0, NODE)
        else:
            assert step == Wait(2.0)
    elif state.held or facts.container_created:
        assert step == FenceVM(2.0)
    else:
        assert step == Wait(2.0)


def test_an_agent_restarted_while_cut_off_adopts_before_it_fences() -> None:
    sandbox = SandboxFacts(phase=Phase.RUNNING, restart_policy=RestartPolicy.ALWAYS)
    assert next_step(sandbox, RECORDS["started"], VMS["running"], T0, CUT_OFF) == Adopt(2.0)
    held = VMS["held-running"]
    assert next_step(sandbox, RECORDS["started"], held, T0, CUT_OFF) == FenceVM(2.0)


def test_a_sandbox_declared_lost_that_ran_on_is_reported_running_again() -> None:
    lost = SandboxFacts(phase=Phase.FAILED, reason=StatusReason.NODE_LOST, restart_policy=RestartPolicy.NEVER)
    step = next_step(lost, RECORDS["started"], VMS["held-running"], T0, NODE)
    assert step == KeepRunning(2.0, undo_node_lost=True)
    other = replace(lost, reason="Error")
    assert next_step(other, RECORDS["started"], VMS["held-running"], T0, NODE) == KeepRunning(2.0)


# ---- deadlines and back-off, on a clock the test moves -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.mark.parametrize("vm", ["held-running", "held-exited-1", "held-lost"])
def test_the_deadline_ends_a_run_and_shortens_the_poll(vm: str) -> None:
    clock = Clock()
    sandbox = SandboxFacts(phase=Phase.RUNNING, start_time=T0, active_deadline_seconds=5)
    record = RECORDS["started"]
    clock.advance(4.0)
    first = next_step(sandbox, record, VMS[vm], clock.now, NODE)
    if vm == "held-running":
        assert first == KeepRunning(1.0)  # min(poll 2 s, 1 s left)
    else:
        assert isinstance(first, Exited)  # an end before the deadline is an end, not a deadline
    clock.advance(1.0)
    assert next_step(sandbox, record, VMS[vm], clock.now, NODE) == Deadline()
    clock.advance(100.0)
    assert next_step(sandbox, record, VMS[vm], clock.now, NODE) == Deadline()


def test_no_deadline_before_the_run_has_a_start_time() -> None:
    sandbox = SandboxFacts(phase=Phase.CREATING, active_deadline_seconds=1)
    step = next_step(sandbox, RECORDS["started"], VMS["held-running"], T0 + timedelta(days=1), NODE)
    assert step == KeepRunning(2.0)


def _run_until_exit(
    sandbox: SandboxFacts, record: RecordFacts, clock: Clock, run_seconds: float
) -> tuple[Exited, RecordFacts]:
    """Launch, run for ``run_seconds``, exit 1: the step the agent takes and the record after it."""
    assert next_step(sandbox, record, VMS["absent"], clock.now, NODE) == Launch()
    running = replace(record, container_created=True, container_started=True, run_started=clock.now)
    assert isinstance(next_step(sandbox, running, VMS["held-running"], clock.now, NODE), KeepRunning)
    clock.advance(run_seconds)
    step = next_step(sandbox, running, VMS["held-exited-1"], clock.now, NODE)
    assert isinstance(step, Exited)
    after = RecordFacts(
        finalizer_added=True,
        finished=RunEnd(restart=step.restart, exit_code=1),
        restart_at=clock.now + timedelta(seconds=step.delay) if step.restart else None,
        consecutive=step.consecutive,
    )
    return step, after


def test_crash_loop_back_off_doubles_to_its_cap_and_resets_after_a_long_run() -> None:
    clock = Clock()
    sandbox = SandboxFacts(phase=Phase.RUNNING, restart_policy=RestartPolicy.ON_FAILURE)
    record = RECORDS["finalizer"]
    delays = []
    for _ in range(7):
        step, record = _run_until_exit(sandbox, record, clock, run_seconds=1.0)
        delays.append(step.delay)
        # Waiting: never launched before the back-off ends, however often the worker asks.
        for _ in range(3):
            waiting = next_step(sandbox, record, VMS["absent"], clock.now, NODE)
            assert isinstance(waiting, Wait) and waiting.seconds is not None
            clock.advance(waiting.seconds / 2 if waiting.seconds > 0.01 else 0.0)
        assert record.restart_at is not None
        clock.now = record.restart_at
    assert delays == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    step, record = _run_until_exit(sandbox, record, clock, run_seconds=601.0)
    assert (step.delay, step.consecutive) == (10.0, 1)


def test_a_stale_finished_phase_waits_for_no_restart_but_a_due_one_launches() -> None:
    """A restart that is due launches even though the last status said Failed or Succeeded."""
    sandbox = SandboxFacts(phase=Phase.SUCCEEDED, restart_policy=RestartPolicy.ALWAYS)
    assert next_step(sandbox, RECORDS["restart-due"], VMS["absent"], T0, NODE) == Launch()
    assert next_step(sandbox, RECORDS["finalizer"], VMS["absent"], T0, NODE) == IDLE


@pytest.mark.parametrize(
    ("policy", "permanent", "want"),
    [
        (RestartPolicy.NEVER, False, GiveUp()),
        (RestartPolicy.NEVER, True, GiveUp()),
        (RestartPolicy.ON_FAILURE, True, GiveUp()),
        (RestartPolicy.ALWAYS, True, GiveUp()),
        (RestartPolicy.ON_FAILURE, False, Retry(40.0, 3)),
        (RestartPolicy.ALWAYS, False, Retry(40.0, 3)),
    ],
)
def test_a_failed_launch_is_retried_with_back_off_unless_it_cannot_help(
    policy: RestartPolicy, permanent: bool, want: Retry | GiveUp
) -> None:
    retry = None if permanent else NODE_BACKOFF
    assert after_launch_failure(policy, retry, 2, NODE) == want


# The node's back-off (10 s doubling to 300 s) is the scale and the bound of every kind: an
# image pull starts sooner, a host short of resources later, and none waits beyond the cap.
@pytest.mark.parametrize(
    ("kind", "consecutive", "want"),
    [
        (errors.ImagePullFailed, 0, Retry(2.5, 1)),
        (errors.ImagePullFailed, 2, Retry(10.0, 3)),
        (errors.ImagePullFailed, 20, Retry(300.0, 21)),
        (errors.ContainerCreateFailed, 0, Retry(10.0, 1)),
        (errors.BundleFailed, 2, Retry(40.0, 3)),
        (errors.SandboxFailure, 2, Retry(40.0, 3)),
        (NetworkError, 0, Retry(10.0, 1)),
        (errors.VMBootFailed, 0, Retry(20.0, 1)),
        (errors.VMBootFailed, 2, Retry(80.0, 3)),
        (errors.VMBootFailed, 20, Retry(300.0, 21)),
        (OutOfCapacity, 0, Retry(20.0, 1)),
        (AddressesExhausted, 1, Retry(40.0, 2)),
        (errors.ImageNotPresent, 0, GiveUp()),
        (errors.InvalidImage, 0, GiveUp()),
        (errors.ImageInvalid, 0, GiveUp()),
        (errors.InvalidSpec, 0, GiveUp()),
        (errors.HypervisorNotAllowed, 0, GiveUp()),
        (errors.ImageNotAllowed, 0, GiveUp()),
    ],
)
def test_each_failure_kind_is_retried_after_its_own_delay_or_given_up(
    kind: type[errors.SandboxFailure], consecutive: int, want: Retry | GiveUp
) -> None:
    failure = kind("detail")
    assert after_launch_failure(RestartPolicy.ON_FAILURE, failure.retry_policy, consecutive, NODE) == want
    assert after_launch_failure(RestartPolicy.NEVER, failure.retry_policy, consecutive, NODE) == GiveUp()


def test_the_nodes_settings_scale_and_bound_every_kinds_delay() -> None:
    """An admin's restartBackoffSeconds/MaxSeconds move every kind; the kinds keep their order."""
    node = NodeFacts(backoff_seconds=1.0, backoff_max_seconds=3.0)
    pull, boot = errors.ImagePullFailed.retry_policy, errors.VMBootFailed.retry_policy
    assert after_launch_failure(RestartPolicy.ALWAYS, pull, 0, node) == Retry(0.25, 1)
    assert after_launch_failure(RestartPolicy.ALWAYS, boot, 0, node) == Retry(2.0, 1)
    assert after_launch_failure(RestartPolicy.ALWAYS, boot, 1, node) == Retry(3.0, 2)
    tight = NodeFacts(backoff_seconds=10.0, backoff_max_seconds=10.0)
    assert after_launch_failure(RestartPolicy.ALWAYS, boot, 0, tight) == Retry(10.0, 1)


def test_an_adopted_run_that_vanished_counts_as_lost_only_if_it_may_have_run() -> None:
    record = RECORDS["started"]
    for phase in (Phase.RUNNING, Phase.PAUSED, Phase.CREATING):
        never = SandboxFacts(phase=phase, restart_policy=RestartPolicy.NEVER)
        assert next_step(never, record, VMS["absent"], T0, NODE) == Exited(None, True, False, 0.0, 0)
    scheduled = SandboxFacts(phase=Phase.SCHEDULED, restart_policy=RestartPolicy.NEVER)
    assert next_step(scheduled, record, VMS["absent"], T0, NODE) == ForgetCreate()
    # Interrupted before the start: nothing ran, so it is created again, even for Never.
    running = SandboxFacts(phase=Phase.RUNNING, restart_policy=RestartPolicy.NEVER)
    assert next_step(running, RECORDS["creating"], VMS["absent"], T0, NODE) == ForgetCreate()
