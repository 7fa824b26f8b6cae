"""One reconcile worker per sandbox: gather the facts, ask :func:`~vmsandbox.node_agent.lifecycle.next_step`,
perform the step.

The worker is a thread that sleeps on an event: the watch wakes it with each new version of
the object, and it wakes itself every ``pollIntervalSeconds`` while a container runs to notice
exits and dead VMMs. Each pass turns the latest object, the local record and the runtime's
view of the VM into plain facts; the decision is :mod:`vmsandbox.node_agent.lifecycle`'s, the
launch's stages are :mod:`vmsandbox.node_agent.stages`'. Every step is safe to repeat after an
agent restart.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from vmsandbox.api.constants import AGENT_FINALIZER, NODE_LABEL
from vmsandbox.api.reasons import EventReason, StatusReason
from vmsandbox.api.resource import InvalidSandbox, VMSandbox, parse_sandbox
from vmsandbox.api.spec import PullPolicy, RestartPolicy
from vmsandbox.api.status import now
from vmsandbox.errors import VMSandboxError
from vmsandbox.hypervisor.procs import running
from vmsandbox.kube.expectations import WriteExpectations
from vmsandbox.kube.retry import WriteDeferred, retry_hint
from vmsandbox.node_agent import lifecycle as lc
from vmsandbox.node_agent import pausing, statusedits
from vmsandbox.node_agent.context import AgentContext
from vmsandbox.node_agent.errors import ImagePullFailed, InvalidSpec, SandboxFailure, VMBootFailed, as_failure
from vmsandbox.node_agent.logs import SandboxLog, bind_sandbox
from vmsandbox.node_agent.prefetch import Prefetch
from vmsandbox.node_agent.records import ContainerEnd, SandboxRecord, container_id_for
from vmsandbox.node_agent.stages import Launch, Started, Stopped, ms, timed
from vmsandbox.node_agent.statusqueue import StatusQueue
from vmsandbox.node_agent.statuswriter import Mutation
from vmsandbox.runtime import ContainerState

__all__ = ["AgentContext", "SandboxWorker"]

logger = logging.getLogger("vmsandbox.node_agent.worker")

#: How long an idle worker sleeps when nothing can change without a new object version.
IDLE = 3600.0
#: How soon a pass comes back to send status changes the API server did not take.
PENDING_RETRY = 1.0

Obj = dict[str, Any]


def _version(obj: Obj) -> str | None:
    return obj["metadata"].get("resourceVersion")


class SandboxWorker:
    def __init__(self, ctx: AgentContext, obj: Obj, on_exit: Callable[[SandboxWorker], None]) -> None:
        meta = obj["metadata"]
        self.ctx = ctx
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.log = SandboxLog(logger, self.namespace, self.name)
        self._obj: Obj | None = obj
        #: ``_obj`` was read from the API server just now (not delivered by the watch).
        self._fresh = False
        self._expect = WriteExpectations()
        self._expect.current(_version(obj))  # known: a write that changes nothing returns it
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._on_exit = on_exit
        self.record: SandboxRecord | None = ctx.records.load(self.uid)
        #: The container this worker created or adopted.
        self.container: ContainerState | None = None
        #: The runtime's latest answer about the container (when the worker asked it).
        self._seen: ContainerState | None = None
        self._restart_at: datetime | None = None
        #: The image pull begun beside the finalizer's write, until the launch takes it.
        self._prefetch: Prefetch | None = None
        self._consecutive = 0
        self._run_started: datetime | None = None
        self.status = StatusQueue(
            uid=self.uid,
            writer=ctx.writer,
            pool=ctx.writes,
            metrics=ctx.metrics,
            log=self.log,
            abort=self._abort,
            latest=self.latest,
            wrote=self._wrote,
        )
        self.phase: str | None = (obj.get("status") or {}).get("phase")
        self.thread = threading.Thread(target=self._run, name=f"sb-{self.name}"[:15], daemon=True)

    # ---- driven by the watch -----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def update(self, obj: Obj | None, *, listed: bool = False) -> None:
        """A new version of the object (``listed``: from a full list), or None when it is gone
        (or no longer on this node)."""
        with self._lock:
            if obj is not None and self._same(obj):
                if listed:
                    self._expect.reset()
                if not self._expect.current(_version(obj)):
                    return  # from before the agent's own write: what it holds is newer
            self._obj, self._fresh = obj, False
        self._wake.set()

    def _same(self, obj: Obj) -> bool:
        return self._obj is not None and obj["metadata"].get("uid") == self._obj["metadata"].get("uid")

    def _wrote(self, written: Obj) -> None:
        """Remember the agent's own write, so a reconcile never acts on the version it replaced."""
        with self._lock:
            if self._expect.expect(_version(written)) or not _version(written):
                self._obj, self._fresh = written, False
            self.phase = (written.get("status") or {}).get("phase")

    def _read_fresh(self, fresh: Obj) -> None:
        with self._lock:
            self._expect.expect(_version(fresh))
            self._obj, self._fresh = fresh, True

    def latest(self) -> Obj | None:
        with self._lock:
            return self._obj

    @property
    def cid(self) -> str:
        return self.record.container_id if self.record else container_id_for(self.uid)

    def has_pending(self) -> bool:
        return self.status.has_pending()

    # ---- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        bind_sandbox(self.namespace, self.name)
        delay: float | None = 0.0
        while delay is not None:
            if delay > 0:
                self._wake.wait(delay)
            self._wake.clear()
            try:
                delay = self._reconcile()
            except Exception as exc:
                if retry_hint(exc) is None and not isinstance(exc, WriteDeferred):
                    self.log.exception("reconcile failed; retrying in 5s")
                else:
                    self.log.warning("the API server did not answer (%s); retrying in 5s", exc)
                delay = 5.0
            if delay is not None and self.has_pending():
                delay = min(delay, PENDING_RETRY)
        if self._prefetch is not None:
            self._prefetch.drop()
        self._on_exit(self)

    def _reconcile(self) -> float | None:
        """One pass: the facts, the decision, the step."""
        with self._lock:
            obj, fresh = self._obj, self._fresh
        facts, sandbox = self._sandbox_facts(obj, fresh)
        if obj is not None and sandbox is not None and self.has_pending() and not facts_block(facts):
            obj = self.status.write(obj, statusedits.unchanged)
        vm = self._vm_facts()
        step = lc.next_step(facts, self._record_facts(), vm, datetime.now(UTC), self._node_facts())
        return self._perform(step, obj, sandbox)

    # ---- facts -------------------------------------------------------------------------

    def _ours(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        labels = obj["metadata"].get("labels") or {}
        return bool(
            labels.get(NODE_LABEL) == self.ctx.config.node_name and obj["metadata"].get("uid") == self.uid
        )

    def _sandbox_facts(self, obj: Obj | None, fresh: bool) -> tuple[lc.SandboxFacts | None, VMSandbox | None]:
        if obj is None or not self._ours(obj):
            return None, None
        meta = obj["metadata"]
        base = lc.SandboxFacts(
            deleting=bool(meta.get("deletionTimestamp")),
            has_finalizer=AGENT_FINALIZER in (meta.get("finalizers") or []),
            fresh=fresh,
        )
        try:
            sandbox = parse_sandbox(obj)
        except InvalidSandbox as exc:
            return replace(base, invalid=str(exc.detail)), None
        status, spec = sandbox.status, sandbox.spec
        self.phase = status.phase.value if status.phase else None
        facts = lc.SandboxFacts(
            phase=status.phase,
            reason=status.reason,
            restart_policy=spec.restart_policy,
            deleting=base.deleting,
            has_finalizer=base.has_finalizer,
            fresh=fresh,
            placed_here=status.node_name == self.ctx.config.node_name,
            start_time=status.start_time,
            active_deadline_seconds=spec.active_deadline_seconds,
        )
        return facts, sandbox

    def _record_facts(self) -> lc.RecordFacts:
        record = self.record
        if record is None:
            return lc.RecordFacts(restart_at=self._restart_at, consecutive=self._consecutive)
        end = record.finished
        return lc.RecordFacts(
            finalizer_added=record.finalizer_added,
            container_created=record.container_created,
            container_started=record.container_started,
            finished=lc.RunEnd(end.restart, end.exit_code) if end is not None else None,
            restart_at=self._restart_at,
            consecutive=self._consecutive,
            run_started=self._run_started,
        )

    def _vm_facts(self) -> lc.VMFacts:
        held = self.container
        if held is not None:
            vmm = held.vm.vmm_pid if held.vm else 0
            if running(held.pid) and running(vmm):
                return lc.VMFacts(lc.VMState.RUNNING, held=True)
            return self._probe(held=True)
        if self.record is not None and self.record.container_created:
            return self._probe(held=False)
        return lc.VMFacts()

    def _probe(self, *, held: bool) -> lc.VMFacts:
        """Ask the runtime what became of the container."""
        state = self._seen = self.ctx.runtimes.state(self.cid)
        if state is None:
            return lc.VMFacts(lc.VMState.ABSENT, held=held)
        alive = self.ctx.runtimes.vm_alive(state)
        if state.status in ("running", "created") and alive:
            if held:
                self.container = state
            return lc.VMFacts(lc.VMState.RUNNING, held=held)
        if not alive and state.exit_code is None:
            return lc.VMFacts(lc.VMState.LOST, held=held)
        return lc.VMFacts(lc.VMState.EXITED, held=held, exit_code=state.exit_code)

    def _node_facts(self) -> lc.NodeFacts:
        cfg, fence = self.ctx.config, self.ctx.fence
        return lc.NodeFacts(
            cut_off=fence is not None and fence.due(),
            poll_seconds=cfg.poll_interval_seconds,
            backoff_seconds=cfg.restart_backoff_seconds,
            backoff_max_seconds=cfg.restart_backoff_max_seconds,
        )

    # ---- steps -------------------------------------------------------------------------

    def _perform(self, step: lc.Step, obj: Obj | None, sandbox: VMSandbox | None) -> float | None:
        """Run ``step``; seconds until the next pass (None: the worker is done)."""
        match step:
            case lc.Forget(why):
                self._forget(why)
                return None
            case lc.Wait(seconds):
                return IDLE if seconds is None else seconds
        assert obj is not None
        match step:
            case lc.Release():
                self._release(obj)
                return None
            case lc.Reread():
                return self._reread(obj)
            case lc.Abandon():
                self._abandon(obj)
                return None
            case lc.AddFinalizer():
                return self._add_finalizer(obj, sandbox)
            case lc.Reject(detail):
                self._fail(obj, InvalidSpec(detail))
                return IDLE
        assert sandbox is not None
        return self._perform_run_step(step, obj, sandbox)

    def _perform_run_step(self, step: lc.Step, obj: Obj, sandbox: VMSandbox) -> float | None:
        match step:
            case lc.FinishTeardown():
                self._teardown("finishing the teardown of a run that ended")
                return 0.0
            case lc.ForgetCreate():
                return self._forget_create()
            case lc.Adopt(wait):
                return self._adopt(obj, sandbox, wait)
            case lc.FenceVM(wait):
                return self._fence(obj, wait)
            case lc.ReportEnd():
                return self._report_end(obj, sandbox)
            case lc.KeepRunning(wait, undo_node_lost):
                return self._keep_running(obj, sandbox, wait, undo_node_lost)
            case lc.Exited():
                return self._exited(obj, sandbox, step)
            case lc.Deadline():
                return self._deadline(obj, sandbox)
            case lc.Launch():
                return self._launch(obj, sandbox)
        raise AssertionError(f"unhandled step {step!r}")

    # ---- the object: gone, deleted, finalizer ------------------------------------------

    def _forget(self, why: str) -> None:
        self._teardown(why)
        self.ctx.records.remove(self.uid)

    def _release(self, obj: Obj) -> None:
        obj = self.status.settle() or obj
        self._teardown("the sandbox is being deleted")
        self.ctx.records.remove(self.uid)
        if self.ctx.writer.set_finalizer(obj, AGENT_FINALIZER, present=False) is not None:
            self.log.info("torn down; finalizer removed")

    def _reread(self, obj: Obj) -> float | None:
        """A watch event older than the agent's own patch also lacks the finalizer: read afresh."""
        fresh = self.ctx.writer.kube.get_sandbox(self.namespace, self.name)
        if fresh is None:
            self._abandon(obj)
            return None
        self._read_fresh(fresh)
        return 0.0

    def ensure_record(self, hypervisor: str | None = None) -> SandboxRecord:
        if self.record is None:
            self.record = SandboxRecord(
                uid=self.uid,
                namespace=self.namespace,
                name=self.name,
                container_id=container_id_for(self.uid),
            )
        if hypervisor is not None:
            self.record.hypervisor = hypervisor
        return self.record

    def save_record(self) -> None:
        if self.record is not None:
            self.ctx.records.save(self.record)

    def _add_finalizer(self, obj: Obj, sandbox: VMSandbox | None) -> float:
        record = self.ensure_record()
        record.finalizer_added = True
        self.save_record()
        if sandbox is not None and self._prefetch is None:  # the pull overlaps the write
            spec, bind = sandbox.spec, functools.partial(bind_sandbox, self.namespace, self.name)
            self._prefetch = Prefetch(self.ctx.images, spec.image, spec.image_pull_policy, bind)
        with timed(self.ctx.metrics, "finalizer"):
            updated = self.ctx.writer.set_finalizer(obj, AGENT_FINALIZER, present=True, abort=self._abort)
        if updated is not None:
            self._wrote(updated)
        return 0.0

    def _abandon(self, obj: Obj) -> None:
        """Someone else removed the agent's finalizer: the agent no longer owns this sandbox's VM."""
        self.log.warning("finalizer %s was removed by someone else; tearing the VM down", AGENT_FINALIZER)
        self._teardown("the agent's finalizer was removed")
        self.ctx.records.remove(self.uid)
        record = self.ensure_record()
        record.abandoned = True
        self.save_record()
        self.ctx.events.record(
            obj,
            EventReason.FINALIZER_REMOVED,
            f"{AGENT_FINALIZER} removed by another client; VM torn down",
            warning=True,
        )

    # ---- adoption ----------------------------------------------------------------------

    def _forget_create(self) -> float:
        """The record says created, but no run can have happened: create it again."""
        record = self.ensure_record()
        started = record.container_started
        record.container_created = record.container_started = False
        self.save_record()
        if started is False:  # the previous agent died mid-create; its debris was swept
            self.log.info("the create was interrupted by an agent restart; creating it again")
        return 0.0

    def _adopt(self, obj: Obj, sandbox: VMSandbox, wait: float) -> float:
        """After an agent restart: take over a VM that is still running instead of booting another."""
        state = self._seen
        assert state is not None
        self.container = state
        self._run_started = datetime.now(UTC)
        resources = sandbox.spec.resources
        self.ctx.admission.hold(self.uid, resources.vcpus, resources.memory_mib)
        self.ctx.metrics.adopted.inc()
        vm_id = state.vm.vm_id if state.vm else ""
        self.log.info("adopted running VM (VMM pid %s)", state.vm.vmm_pid if state.vm else None)
        self.ctx.events.record(obj, EventReason.ADOPTED, f"adopted running VM {vm_id}")
        return wait

    # ---- launching ---------------------------------------------------------------------

    def deleting(self) -> bool:
        obj = self.latest()
        return not self._ours(obj) or bool(obj and obj["metadata"].get("deletionTimestamp"))

    def take_prefetch(self, reference: str, policy: PullPolicy) -> Prefetch | None:
        """The pull begun beside the finalizer's write, if it is the one the launch would make."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None and not prefetch.serves(reference, policy):
            prefetch.drop()
            return None
        return prefetch

    def write_later(self, mutate: Mutation) -> None:
        self.status.later(mutate)

    def _abort(self) -> bool:
        """Stop retrying a write: the worker must go on to fence its VM."""
        fence = self.ctx.fence
        return fence is not None and fence.due()

    def _launch(self, obj: Obj, sandbox: VMSandbox) -> float | None:
        self._restart_at = None
        launch = Launch(self, obj, sandbox)
        refenced = self.record is not None and self.record.fenced_at is not None
        policy = sandbox.spec.restart_policy
        try:
            done = launch.run(refenced, self._created)
        except Stopped:
            return 0.0
        except VMSandboxError as exc:
            failure = as_failure(exc)
            if isinstance(failure, VMBootFailed):
                self.ctx.metrics.vmm_failures.labels(launch.hypervisor, "boot").inc()
            if isinstance(failure, ImagePullFailed):
                self.log.warning("image pull failed: %s", failure)
            self._fail(obj, failure, policy=policy)
        else:
            return self._started(obj, launch, done)
        return (self._restart_at - datetime.now(UTC)).total_seconds() if self._restart_at else IDLE

    def _created(self, state: ContainerState) -> None:
        self.container = state

    def _started(self, obj: Obj, launch: Launch, done: Started) -> float:
        self.container = done.state
        self._run_started = datetime.now(UTC)
        obj = self.status.write(obj, launch.running(done))
        self.ctx.events.record(obj, EventReason.STARTED, f"container started in {ms(done.total_s):.0f} ms")
        vmm = launch.vm_status(done.created.state).vmm_pid
        self.log.info("running (VMM pid %s) after %.0f ms", vmm, ms(done.total_s))
        return self.ctx.config.poll_interval_seconds

    def _fail(
        self,
        obj: Obj,
        failure: SandboxFailure,
        *,
        policy: RestartPolicy = RestartPolicy.NEVER,
    ) -> None:
        """Report a failure to get the container running; retry after the failure kind's back-off
        when both the kind and the restart policy allow it."""
        decision = lc.after_launch_failure(
            policy, failure.retry_policy, self._consecutive, self._node_facts()
        )
        again = isinstance(decision, lc.Retry)
        if not again:
            self._record_end(ContainerEnd(reason=failure.reason, message=str(failure)))
        self._teardown(f"{failure.reason}: {failure}")
        delay = 0.0
        if isinstance(decision, lc.Retry):
            self._consecutive, delay = decision.consecutive, decision.delay
            self._restart_at = datetime.now(UTC) + timedelta(seconds=delay)
        message = str(failure) + (f" (retrying in {delay:g}s)" if again else "")
        generation = obj["metadata"].get("generation")
        self.status.write(obj, statusedits.launch_failed(failure.reason, message, again, generation))
        self.log.warning("failed: %s", message)
        self.ctx.events.record(obj, failure.reason, message, warning=True)

    # ---- a running container -----------------------------------------------------------

    def _keep_running(self, obj: Obj, sandbox: VMSandbox, wait: float, undo_node_lost: bool) -> float:
        self._sync_paused(obj, sandbox)
        if undo_node_lost:
            # Declared lost while cut off, yet it ran on (restartPolicy Never is not fenced).
            self.log.info("the sandbox was declared lost but kept running; reporting it Running")
            self.status.write(obj, statusedits.still_running)
        return wait

    def _sync_paused(self, obj: Obj, sandbox: VMSandbox) -> None:
        """spec.paused -> the VM and the status (vmsandbox.node_agent.pausing)."""
        if self.record is None or self.record.hypervisor is None:
            return
        runtime = self.ctx.runtimes.for_hypervisor(self.record.hypervisor)
        pausing.sync(
            runtime,
            self.cid,
            obj,
            sandbox,
            lambda o, mutate: self.status.write(o, mutate),
            lambda o, reason, message, warning: self.ctx.events.record(o, reason, message, warning=warning),
        )

    def _deadline(self, obj: Obj, sandbox: VMSandbox) -> float:
        message = (
            f"the sandbox ran longer than activeDeadlineSeconds ({sandbox.spec.active_deadline_seconds}s)"
        )
        self._record_end(ContainerEnd(reason=StatusReason.DEADLINE_EXCEEDED, message=message))
        self._teardown("activeDeadlineSeconds exceeded")
        self._restart_at = None
        self.status.write(obj, statusedits.deadline_exceeded(message))
        self.log.warning("%s", message)
        self.ctx.events.record(obj, StatusReason.DEADLINE_EXCEEDED, message, warning=True)
        return IDLE

    def _exited(self, obj: Obj, sandbox: VMSandbox, step: lc.Exited) -> float:
        """The container exited or its VM vanished.

        The end is written to the local record first, then the VM is torn down, then the status
        is written: a status write that fails (or an agent restart) in between can neither lose
        the exit code nor let a sandbox that must not restart run again."""
        end = self._end_of(step)
        self._record_end(end)
        self._teardown("the container ended")
        self._consecutive = step.consecutive
        if step.restart:
            self._restart_at = datetime.now(UTC) + timedelta(seconds=step.delay)
            self.ctx.metrics.restarts.inc()
        policy = sandbox.spec.restart_policy
        self.status.write(obj, statusedits.ended(end, self.cid, policy, step.delay))
        failed = end.reason != "Completed"
        restarting = f"; restarting in {step.delay:g}s" if step.restart else ""
        self.ctx.events.record(
            obj, "BackOff" if step.restart else end.reason, end.message + restarting, warning=failed
        )
        self.log.info("%s%s", end.message, restarting)
        return step.delay if step.restart else IDLE

    def _end_of(self, step: lc.Exited) -> ContainerEnd:
        known = self.container or self._seen
        if step.lost and known is None:
            reason, message = "VMLost", "its VM vanished while the agent was down"
        elif step.lost and known is not None:
            self.ctx.metrics.vmm_failures.labels(known.hypervisor, "died").inc()
            reason, message = "VMLost", f"the VM's VMM (pid {known.vm.vmm_pid if known.vm else 0}) died"
        elif step.exit_code == 0:
            reason, message = "Completed", "the container exited with code 0"
        else:
            reason, message = "Error", f"the container exited with code {step.exit_code}"
        if step.lost:
            message += "; the container's exit status is unknown"
        finished = known.finished_at if known is not None else None
        return ContainerEnd.model_validate(
            {
                "exit_code": step.exit_code,
                "reason": reason,
                "message": message,
                "restart": step.restart,
                "finished_at": finished or now(),
            }
        )

    def _record_end(self, end: ContainerEnd) -> None:
        record = self.ensure_record()
        record.finished = end
        self.save_record()

    def _report_end(self, obj: Obj, sandbox: VMSandbox) -> float:
        """A run that ended for good (per the local record): report it; never start it again."""
        end = self.record.finished if self.record is not None else None
        if end is not None and not self.has_pending():
            self.log.info("reporting the recorded end of the last run: %s", end.message)
            self.status.write(obj, statusedits.ended(end, self.cid, sandbox.spec.restart_policy, 0.0))
        return IDLE

    # ---- fencing and teardown ----------------------------------------------------------

    def _fence(self, obj: Obj, wait: float) -> float:
        """Cut off from the API server: stop what the operator will run elsewhere."""
        fence = self.ctx.fence
        why = fence.describe() if fence is not None else "cut off"
        record = self.ensure_record()
        record.fenced_at = datetime.now(UTC)
        self.save_record()
        self._teardown(f"fenced: {why}")
        self._restart_at = None
        self.ctx.metrics.fenced.inc()
        self.log.warning("VM stopped (fencing): %s", why)
        self.ctx.events.record(obj, StatusReason.FENCED, f"VM stopped: {why}", warning=True)
        return wait

    def _teardown(self, why: str) -> None:
        """Stop the container and VM and free the bundle; the log stays until the sandbox is deleted."""
        self.status.settle()
        had = self.ctx.runtimes.destroy(self.cid)
        self.container = self._seen = None
        if self.ctx.network is not None:
            self.ctx.network.detach(self.uid)
        self.ctx.admission.release(self.uid)
        if had:
            self.log.info("VM torn down (%s)", why)
        if self.record is not None and self.record.container_created:
            self.record.container_created = self.record.container_started = False
            with contextlib.suppress(OSError):
                self.save_record()
        shutil.rmtree(self.ctx.records.bundle_dir(self.uid), ignore_errors=True)


def facts_block(facts: lc.SandboxFacts | None) -> bool:
    """Whether the object's state comes before any status write (gone, deleted, finalizer, spec)."""
    return facts is None or facts.deleting or not facts.has_finalizer or facts.invalid is not None
