"""One reconcile worker per sandbox: from Scheduled to a running VM, then watching it until the end.

The worker is a thread that sleeps on an event: the watch wakes it with each new version of
the object, and it wakes itself every ``pollIntervalSeconds`` while a container runs to notice
exits and dead VMMs. Each pass looks at the latest object and the local facts (record, runtime
state) and takes the next step; every step is safe to repeat after an agent restart.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vmsandbox.api.constants import (
    AGENT_FINALIZER,
    NODE_LABEL,
    PROCESS_BACKEND_ALLOWED,
    PROCESS_BACKEND_LABEL,
)
from vmsandbox.api.reasons import StatusReason
from vmsandbox.api.resource import InvalidSandbox, VMSandbox, parse_sandbox
from vmsandbox.api.spec import RestartPolicy
from vmsandbox.api.status import (
    BootTimings,
    ConditionStatus,
    ConditionType,
    ContainerStatus,
    Phase,
    VMSandboxStatus,
    VMStatus,
    now,
)
from vmsandbox.errors import VMSandboxError
from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.procs import running
from vmsandbox.node_agent import pausing, warmstart
from vmsandbox.node_agent.admission import LocalAdmission
from vmsandbox.node_agent.apiretry import WriteDeferred, retry_hint
from vmsandbox.node_agent.bundle import build_bundle
from vmsandbox.node_agent.config import AgentConfig
from vmsandbox.node_agent.errors import HypervisorNotAllowed, ImagePullFailed, InvalidSpec, SandboxFailure
from vmsandbox.node_agent.events import EventRecorder
from vmsandbox.node_agent.fencing import Fence
from vmsandbox.node_agent.images import ImageStore
from vmsandbox.node_agent.logs import SandboxLog, bind_sandbox
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.network import NodeNetwork
from vmsandbox.node_agent.network.attach import attach_sandbox
from vmsandbox.node_agent.policy import backoff_delay, should_restart
from vmsandbox.node_agent.poolkeeper import PoolKeeper
from vmsandbox.node_agent.records import ContainerEnd, RecordStore, SandboxRecord, container_id_for
from vmsandbox.node_agent.runtimes import Runtimes
from vmsandbox.node_agent.statuswriter import Mutation, SandboxWriter, WriteFailed
from vmsandbox.runtime import ContainerState

logger = logging.getLogger("vmsandbox.node_agent.worker")

#: A run longer than this resets the back-off, as the kubelet does after 10 minutes.
BACKOFF_RESET_SECONDS = 600.0
#: How long an idle worker sleeps when nothing can change without a new object version.
IDLE = 3600.0
#: How soon a pass comes back to send status changes the API server did not take.
PENDING_RETRY = 1.0
#: Failures that retrying cannot fix: the spec or the image must change.
PERMANENT = (
    "InvalidSpec",
    "InvalidImage",
    "HypervisorNotAllowed",
    "ErrImageNeverPull",
    StatusReason.IMAGE_NOT_ALLOWED,
    StatusReason.IMAGE_INVALID,
)


@dataclass
class AgentContext:
    """What every worker shares."""

    config: AgentConfig
    writer: SandboxWriter
    events: EventRecorder
    images: ImageStore
    runtimes: Runtimes
    records: RecordStore
    metrics: AgentMetrics
    start_slots: threading.BoundedSemaphore
    #: Runs status writes that need not hold up the boot (they stay in order per sandbox).
    writes: ThreadPoolExecutor
    usable_hypervisors: list[str]
    admission: LocalAdmission
    #: Why an allowed backend cannot run here (not installed, TCG without allowTCG).
    hypervisor_refusals: dict[str, str]
    #: The node's sandbox network; None when the agent has no ``sandboxCIDR``.
    network: NodeNetwork | None = None
    #: This node's pool members (vmsandbox.node_agent.poolkeeper).
    pools: PoolKeeper | None = None
    #: Says when the agent has been cut off from the API server for too long (never: None).
    fence: Fence | None = None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class SandboxWorker:
    def __init__(self, ctx: AgentContext, obj: dict[str, Any], on_exit: Any) -> None:
        meta = obj["metadata"]
        self.ctx = ctx
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.log = SandboxLog(logger, self.namespace, self.name)
        self._obj: dict[str, Any] | None = obj
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._on_exit = on_exit
        self.record: SandboxRecord | None = ctx.records.load(self.uid)
        self.container: ContainerState | None = None
        self._restart_at: float | None = None
        self._consecutive = 0
        self._run_started: float | None = None
        self._adopt_checked = False
        self._queued: Future[dict[str, Any] | None] | None = None
        #: Status changes the API server has not taken yet, oldest first (sent with the next write).
        self._pending: list[Mutation] = []
        self.phase: str | None = (obj.get("status") or {}).get("phase")
        self.thread = threading.Thread(target=self._run, name=f"sb-{self.name}"[:15], daemon=True)

    # ---- driven by the watch -----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def update(self, obj: dict[str, Any] | None) -> None:
        """A new version of the object, or None when it is gone (or no longer on this node)."""
        with self._lock:
            if obj is not None and _older(obj, self._obj):
                return  # a watch event from before our own write: what we wrote is newer
            self._obj = obj
        self._wake.set()

    def _wrote(self, written: dict[str, Any]) -> None:
        """Remember our own write, so a reconcile never acts on the version it replaced."""
        with self._lock:
            if not _older(written, self._obj):
                self._obj = written

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return self._obj

    @property
    def cid(self) -> str:
        return self.record.container_id if self.record else container_id_for(self.uid)

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
        self._on_exit(self)

    def _ours(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        labels = obj["metadata"].get("labels") or {}
        return bool(
            labels.get(NODE_LABEL) == self.ctx.config.node_name and obj["metadata"].get("uid") == self.uid
        )

    def _reconcile(self) -> float | None:
        obj = self.latest()
        if not self._ours(obj):
            self._teardown("the sandbox is gone or no longer scheduled to this node")
            self.ctx.records.remove(self.uid)
            return None
        assert obj is not None
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            obj = self._settle() or obj
            self._teardown("the sandbox is being deleted")
            self.ctx.records.remove(self.uid)
            if self.ctx.writer.set_finalizer(obj, AGENT_FINALIZER, present=False) is not None:
                self.log.info("torn down; finalizer removed")
            return None
        if AGENT_FINALIZER not in (meta.get("finalizers") or []):
            if self.record is not None and self.record.finalizer_added:
                # A watch event older than our own patch also lacks it: only a fresh read decides.
                fresh = self.ctx.writer.kube.get_sandbox(self.namespace, self.name)
                if fresh is None or AGENT_FINALIZER not in (fresh["metadata"].get("finalizers") or []):
                    self._abandon(fresh or obj)
                    return None
                self.update(fresh)
                return 0.0
            obj = self._add_finalizer(obj)
            if obj is None:
                return 0.0
        try:
            sandbox = parse_sandbox(obj)
        except InvalidSandbox as exc:
            self._fail(obj, InvalidSpec(str(exc.detail)), retry=False)
            return IDLE
        self.phase = sandbox.status.phase.value if sandbox.status.phase else None
        if self.has_pending():
            obj = self._write(obj, _unchanged)
        if not self._adopt_checked:
            self._adopt_checked = True
            adopted = self._adopt(obj, sandbox)
            if adopted is not None:
                return adopted
        fence = self.ctx.fence
        if fence is not None and fence.due():
            return self._cut_off(obj, sandbox, fence)
        finished = self.record.finished if self.record is not None else None
        if self.container is None and finished is not None and not finished.restart:
            return self._report_end(obj, sandbox, finished)
        if self.container is not None:
            return self._monitor(obj, sandbox)
        if sandbox.status.phase is not None and sandbox.status.phase.finished and self._restart_at is None:
            return IDLE
        if self._restart_at is not None and time.monotonic() < self._restart_at:
            return self._restart_at - time.monotonic()
        self._restart_at = None
        if sandbox.status.node_name != self.ctx.config.node_name:
            # Only the operator places sandboxes: a label alone (which a tenant may have set) is
            # not a placement until the operator has recorded this node in status.nodeName.
            return IDLE
        return self._launch(obj, sandbox)

    # ---- finalizer ---------------------------------------------------------------------

    def _ensure_record(self, hypervisor: str | None = None) -> SandboxRecord:
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

    def _save_record(self) -> None:
        if self.record is not None:
            self.ctx.records.save(self.record)

    def _add_finalizer(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        record = self._ensure_record()
        record.finalizer_added = True
        self._save_record()
        with self._step("finalizer"):
            updated = self.ctx.writer.set_finalizer(obj, AGENT_FINALIZER, present=True, abort=self._abort)
        if updated is not None:
            self._wrote(updated)
        return updated

    def _abandon(self, obj: dict[str, Any]) -> None:
        """Someone else removed our finalizer: the agent no longer owns this sandbox's VM."""
        self.log.warning("finalizer %s was removed by someone else; tearing the VM down", AGENT_FINALIZER)
        self._teardown("the agent's finalizer was removed")
        self.ctx.records.remove(self.uid)
        record = self._ensure_record()
        record.abandoned = True
        self._save_record()
        self.ctx.events.record(
            obj,
            "FinalizerRemoved",
            f"{AGENT_FINALIZER} removed by another client; VM torn down",
            warning=True,
        )

    # ---- adoption ----------------------------------------------------------------------

    def _adopt(self, obj: dict[str, Any], sandbox: VMSandbox) -> float | None:
        """After an agent restart: take over a VM that is still running instead of booting another."""
        if self.record is None or not self.record.container_created:
            return None
        if self.record.finished is not None:
            # The run's end was recorded before a teardown that an agent restart cut short.
            self._teardown("finishing the teardown of a run that ended")
            return None
        state = self.ctx.runtimes.state(self.cid)
        if state is None:
            started = self.record.container_started
            self.record.container_created = self.record.container_started = False
            self._save_record()
            if started is False:  # the previous agent died mid-create; its debris was swept
                self.log.info("the create was interrupted by an agent restart; creating it again")
                return None
            if sandbox.status.phase in (Phase.RUNNING, Phase.PAUSED, Phase.CREATING):
                return self._on_exit_observed(obj, sandbox, None, "its VM vanished while the agent was down")
            return None
        self.container = state
        self._run_started = time.monotonic()
        resources = sandbox.spec.resources
        self.ctx.admission.hold(self.uid, resources.vcpus, resources.memory_mib)
        if state.status == "running" and self.ctx.runtimes.vm_alive(state):
            self.ctx.metrics.adopted.inc()
            vmm = state.vm.vmm_pid if state.vm else None
            self.log.info("adopted running VM (VMM pid %s)", vmm)
            self.ctx.events.record(obj, "Adopted", f"adopted running VM {state.vm.vm_id if state.vm else ''}")
            return self.ctx.config.poll_interval_seconds
        return self._monitor(obj, sandbox)

    # ---- launching ---------------------------------------------------------------------

    def _check_process_backend(self) -> None:
        """The process backend runs containers without a VM: only where an admin allowed it per namespace."""
        namespace = self.ctx.writer.kube.get_namespace(self.namespace)
        labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
        if labels.get(PROCESS_BACKEND_LABEL) != PROCESS_BACKEND_ALLOWED:
            raise HypervisorNotAllowed(
                f"hypervisor 'process' runs containers without a VM (namespaces only); namespace "
                f"{self.namespace} does not allow it (an administrator labels the namespace "
                f"{PROCESS_BACKEND_LABEL}={PROCESS_BACKEND_ALLOWED})"
            )

    def _deleting(self) -> bool:
        obj = self.latest()
        return not self._ours(obj) or bool(obj and obj["metadata"].get("deletionTimestamp"))

    @contextlib.contextmanager
    def _step(self, step: str) -> Iterator[None]:
        """Time one of the agent's own steps (``vmsandbox_agent_step_seconds``)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.ctx.metrics.step.labels(step).observe(time.monotonic() - t0)

    def _write_later(self, mutate: Any) -> None:
        """Queue a status write behind the ones already queued; the worker goes on meanwhile."""
        previous = self._queued

        def run() -> dict[str, Any] | None:
            base = self._result_of(previous)
            obj = base or self.latest()
            if obj is None:
                return None
            written = self._write(obj, mutate, settle=False)
            return None if self.has_pending() else written

        self._queued = self.ctx.writes.submit(run)

    def _result_of(self, queued: Future[dict[str, Any] | None] | None) -> dict[str, Any] | None:
        if queued is None:
            return None
        try:
            return queued.result()
        except Exception as exc:
            self.log.warning("status write failed: %s", exc)
            return None

    def _settle(self) -> dict[str, Any] | None:
        """Wait for queued writes; returns the object the last one wrote."""
        queued, self._queued = self._queued, None
        return self._result_of(queued)

    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def _abort(self) -> bool:
        """Stop retrying a write: the worker must go on to fence its VM."""
        fence = self.ctx.fence
        return fence is not None and fence.due()

    def _write(self, obj: dict[str, Any], mutate: Mutation, *, settle: bool = True) -> dict[str, Any]:
        """Send ``mutate`` (after any changes still pending); a write the API server does not take
        is kept and sent with the next one, and never changes what happens to the sandbox."""
        if settle:
            obj = self._settle() or obj
        with self._lock:
            mutations, self._pending = [*self._pending, mutate], []

        def apply_all(status: VMSandboxStatus) -> None:
            for each in mutations:
                each(status)

        try:
            with self._step("statusWrite"):
                written = self.ctx.writer.update_status(obj, apply_all, uid=self.uid, abort=self._abort)
        except (WriteDeferred, WriteFailed) as exc:
            return self._defer(obj, mutations, exc)
        except Exception as exc:
            if retry_hint(exc) is None:
                raise
            return self._defer(obj, mutations, exc)
        if written is not None:
            self._wrote(written)
            self.phase = (written.get("status") or {}).get("phase")
            return written
        return obj

    def _defer(self, obj: dict[str, Any], mutations: list[Mutation], exc: Exception) -> dict[str, Any]:
        if isinstance(exc, WriteFailed):
            # The server refused the change itself (not "not now"): sending it again cannot help.
            self.log.error("status write refused; dropped: %s", exc)
            return obj
        with self._lock:
            self._pending = mutations + self._pending
        self.ctx.metrics.writes_deferred.inc()
        self.log.warning("status write deferred until the API server answers: %s", exc)
        return obj

    def _launch(self, obj: dict[str, Any], sandbox: VMSandbox) -> float | None:
        cfg = self.ctx.config
        hypervisor = sandbox.spec.hypervisor.value if sandbox.spec.hypervisor else cfg.default_hypervisor
        t_pickup = time.monotonic()
        generation = obj["metadata"].get("generation")

        refenced = self.record is not None and self.record.fenced_at is not None

        def creating(status: VMSandboxStatus) -> None:
            if refenced and status.phase is not Phase.CREATING:
                status.restart_count = (status.restart_count or 0) + 1
            status.phase = Phase.CREATING
            status.reason = None
            status.message = None
            status.hypervisor = hypervisor
            status.start_time = status.start_time or now()
            status.observed_generation = generation
            status.restart_count = status.restart_count or 0
            status.set_condition(
                ConditionType.VM_READY, ConditionStatus.FALSE, "Creating", generation=generation
            )
            status.set_condition(
                ConditionType.CONTAINER_READY, ConditionStatus.FALSE, "Creating", generation=generation
            )
            status.set_condition(
                ConditionType.READY, ConditionStatus.FALSE, "Creating", generation=generation
            )

        self._write_later(creating)
        try:
            if hypervisor not in cfg.allowed_hypervisors:
                raise HypervisorNotAllowed(
                    f"hypervisor {hypervisor!r} is not allowed on node {cfg.node_name} "
                    f"(allowed: {', '.join(cfg.allowed_hypervisors)})"
                )
            if hypervisor not in self.ctx.usable_hypervisors:
                why = self.ctx.hypervisor_refusals.get(hypervisor, "it is not installed")
                raise HypervisorNotAllowed(
                    f"hypervisor {hypervisor!r} cannot run on node {cfg.node_name}: {why}"
                )
            if hypervisor == "process":
                self._check_process_backend()
            resources = sandbox.spec.resources
            claim = warmstart.decide(self.ctx.pools, sandbox)
            self.ctx.admission.admit(self.uid, resources.vcpus, resources.memory_mib)
            record = self._ensure_record(hypervisor)
            record.finished = record.fenced_at = None
            self._save_record()
            self.ctx.events.record(obj, "Pulling", f"pulling image {sandbox.spec.image}")
            t0 = time.monotonic()
            image = self.ctx.images.ensure(sandbox.spec.image, sandbox.spec.image_pull_policy)
            image_s = time.monotonic() - t0
            if image.pulled_bytes:
                self.ctx.metrics.pull_bytes.inc(image.pulled_bytes)
                self.ctx.metrics.pull_seconds.observe(image.pull_seconds)
            self.ctx.metrics.boot_stage.labels("image").observe(image_s)
            try:  # from here the record keeps the image from eviction
                record.image_digest = image.digest
                self._save_record()
            finally:
                self.ctx.images.release(image.digest)
            self.ctx.events.record(obj, "Pulled", f"image {sandbox.spec.image} ready ({image.digest})")
            runtime = self.ctx.runtimes.for_hypervisor(hypervisor)
            with self._step("bundle"):
                bundle = build_bundle(self.ctx.records.bundle_dir(self.uid), sandbox, image)
            if claim is not None and claim.warm:
                warmstart.mark_bundle(bundle, claim)
            if self._deleting():
                return 0.0
            with self._step("network"):
                attachment, network_status, network_s = attach_sandbox(
                    self.ctx.network, self.uid, sandbox, hypervisor
                )
            record.container_created, record.container_started = True, False
            self._save_record()
            t_slot = time.monotonic()
            with self.ctx.start_slots:
                self.ctx.metrics.step.labels("startSlotWait").observe(time.monotonic() - t_slot)
                if self._deleting():
                    record.container_created = False
                    self._save_record()
                    return 0.0
                t_create = time.monotonic()
                try:
                    with self._step("runtimeCreate"):
                        state, claim = warmstart.create(
                            runtime,
                            self.ctx.pools,
                            claim,
                            self.cid,
                            bundle,
                            log_path=self.ctx.records.log_path(self.uid),
                            network=attachment,
                            image_digest=image.digest,
                        )
                except VMSandboxError:
                    record.container_created = False
                    self._save_record()
                    raise
            if claim is not None and claim.warm:
                record.pool = f"{self.namespace}/{sandbox.spec.pool}"
                self._save_record()
            self.container = state
            timings = state.timings
            for stage, value in (
                ("vmmStart", timings.vmmStart),
                ("vmBoot", timings.vmBoot),
                ("agentReady", timings.agentReady),
                ("containerCreate", timings.containerCreate),
            ):
                self.ctx.metrics.boot_stage.labels(stage).observe(value / 1000)
            vm_status = VMStatus(
                id=state.vm.vm_id if state.vm else None, vmm_pid=state.vm.vmm_pid if state.vm else None
            )

            def booted(status: VMSandboxStatus) -> None:
                status.vm = vm_status
                status.network = network_status or status.network
                status.set_condition(
                    ConditionType.VM_READY, ConditionStatus.TRUE, "Booted", generation=generation
                )
                status.boot_timings = BootTimings(
                    schedule=status.boot_timings.schedule if status.boot_timings else None,
                    image=_ms(image_s),
                    vmm_start=timings.vmmStart,
                    vm_boot=timings.vmBoot,
                    agent_ready=timings.agentReady,
                    kernel_to_init=timings.kernelToInit,
                    init_to_agent_ready=timings.initToAgentReady,
                    container_create=timings.containerCreate,
                    network=_ms(network_s) if network_status else None,
                )
                warmstart.record_outcome(status, claim, timings, generation, _ms(t_create - t_pickup))

            # Written with Running below, not on its own: starting the container is one quick call,
            # and one write fewer keeps the agent at three (finalizer, Creating, Running).
            self.ctx.events.record(
                obj, "VMBooted", f"{hypervisor} VM {vm_status.id} booted (VMM pid {vm_status.vmm_pid})"
            )
            if self._deleting():
                return 0.0
            record.container_started = True
            self._save_record()
            with self._step("runtimeStart"):
                state = runtime.start(self.cid)
            self.container = state
            self._run_started = time.monotonic()
            total_s = time.monotonic() - t_pickup
            self.ctx.metrics.boot_stage.labels("total").observe(total_s)

            def running(status: VMSandboxStatus) -> None:
                booted(status)
                status.phase = Phase.RUNNING
                status.container = ContainerStatus(
                    id=self.cid, pid=state.pid or None, started_at=state.started_at or now()
                )
                status.set_condition(
                    ConditionType.CONTAINER_READY, ConditionStatus.TRUE, "Started", generation=generation
                )
                status.set_condition(
                    ConditionType.READY, ConditionStatus.TRUE, "Running", generation=generation
                )
                if status.boot_timings is not None:
                    status.boot_timings.total = round((status.boot_timings.schedule or 0) + _ms(total_s), 3)

            obj = self._write(obj, running)
            self.ctx.events.record(obj, "Started", f"container started in {_ms(total_s):.0f} ms")
            self.log.info("running (VMM pid %s) after %.0f ms", vm_status.vmm_pid, _ms(total_s))
            return self.ctx.config.poll_interval_seconds
        except SandboxFailure as failure:
            if isinstance(failure, ImagePullFailed):
                self.log.warning("image pull failed: %s", failure)
            self._fail(
                obj, failure, retry=failure.reason not in PERMANENT, policy=sandbox.spec.restart_policy
            )
        except HypervisorError as exc:
            self.ctx.metrics.vmm_failures.labels(hypervisor, "boot").inc()
            self._fail(
                obj,
                SandboxFailure(exc.detail, step=exc.step, reason="VMBootFailed"),
                policy=sandbox.spec.restart_policy,
            )
        except VMSandboxError as exc:
            reason = "VMBootFailed" if "boot" in exc.step or "vmm" in exc.step else "ContainerCreateFailed"
            if reason == "VMBootFailed":
                self.ctx.metrics.vmm_failures.labels(hypervisor, "boot").inc()
            self._fail(
                obj,
                SandboxFailure(exc.detail, step=exc.step, reason=reason),
                policy=sandbox.spec.restart_policy,
            )
        return self._restart_at - time.monotonic() if self._restart_at else IDLE

    def _fail(
        self,
        obj: dict[str, Any],
        failure: SandboxFailure,
        *,
        retry: bool = True,
        policy: RestartPolicy = RestartPolicy.NEVER,
    ) -> None:
        """Report a failure to get the container running; retry with back-off when the policy says so."""
        generation = obj["metadata"].get("generation")
        again = retry and policy is not RestartPolicy.NEVER
        if not again:
            self._record_end(ContainerEnd(reason=failure.reason, message=str(failure)))
        self._teardown(f"{failure.reason}: {failure}")
        delay = 0.0
        if again:
            self._consecutive += 1
            delay = backoff_delay(
                self._consecutive,
                self.ctx.config.restart_backoff_seconds,
                self.ctx.config.restart_backoff_max_seconds,
            )
            self._restart_at = time.monotonic() + delay
        message = str(failure) + (f" (retrying in {delay:.0f}s)" if again else "")

        def failed(status: VMSandboxStatus) -> None:
            status.phase = Phase.CREATING if again else Phase.FAILED
            status.reason = failure.reason
            status.message = message
            status.observed_generation = generation
            status.set_condition(
                ConditionType.READY, ConditionStatus.FALSE, failure.reason, message, generation
            )
            status.set_condition(
                ConditionType.CONTAINER_READY, ConditionStatus.FALSE, failure.reason, generation=generation
            )
            if status.vm is None:
                status.set_condition(
                    ConditionType.VM_READY, ConditionStatus.FALSE, failure.reason, generation=generation
                )

        self._write(obj, failed)
        self.log.warning("failed: %s", message)
        self.ctx.events.record(obj, failure.reason, message, warning=True)

    # ---- watching a running container --------------------------------------------------

    def _monitor(self, obj: dict[str, Any], sandbox: VMSandbox) -> float | None:
        state = self.container
        assert state is not None
        poll = self.ctx.config.poll_interval_seconds
        deadline = sandbox.spec.active_deadline_seconds
        start_time = sandbox.status.start_time
        if deadline is not None and start_time is not None:
            left = (start_time - datetime.now(UTC)).total_seconds() + deadline
            if left <= 0:
                self._deadline(obj, sandbox)
                return IDLE
            poll = min(poll, left)
        vmm_pid = state.vm.vmm_pid if state.vm else 0
        if running(state.pid) and running(vmm_pid):
            self._sync_paused(obj, sandbox)
            if sandbox.status.phase is Phase.FAILED and sandbox.status.reason == StatusReason.NODE_LOST:
                # Declared lost while cut off, yet it ran on (restartPolicy Never is not fenced).
                self.log.info("the sandbox was declared lost but kept running; reporting it Running")
                self._write(obj, _still_running)
            return poll
        # The relay or the VMM ended: ask the runtime what happened.
        fresh = self.ctx.runtimes.state(self.cid)
        if fresh is not None and fresh.status in ("running", "created") and self.ctx.runtimes.vm_alive(fresh):
            self.container = fresh
            return poll
        if fresh is None or (not self.ctx.runtimes.vm_alive(fresh) and fresh.exit_code is None):
            self.ctx.metrics.vmm_failures.labels(state.hypervisor, "died").inc()
            return self._on_exit_observed(obj, sandbox, None, f"the VM's VMM (pid {vmm_pid}) died")
        return self._on_exit_observed(obj, sandbox, fresh.exit_code, None)

    def _sync_paused(self, obj: dict[str, Any], sandbox: VMSandbox) -> None:
        """spec.paused -> the VM and the status (vmsandbox.node_agent.pausing)."""
        if self.record is None or self.record.hypervisor is None:
            return
        runtime = self.ctx.runtimes.for_hypervisor(self.record.hypervisor)
        pausing.sync(
            runtime,
            self.cid,
            obj,
            sandbox,
            lambda o, mutate: self._write(o, mutate),
            lambda o, reason, message, warning: self.ctx.events.record(o, reason, message, warning=warning),
        )

    def _deadline(self, obj: dict[str, Any], sandbox: VMSandbox) -> None:
        message = (
            f"the sandbox ran longer than activeDeadlineSeconds ({sandbox.spec.active_deadline_seconds}s)"
        )
        self._record_end(ContainerEnd(reason="DeadlineExceeded", message=message))
        self._teardown("activeDeadlineSeconds exceeded")
        self._restart_at = None

        def expired(status: VMSandboxStatus) -> None:
            status.phase = Phase.FAILED
            status.reason = "DeadlineExceeded"
            status.message = message
            if status.container is not None:
                status.container.finished_at = now()
            for kind in (ConditionType.READY, ConditionType.CONTAINER_READY, ConditionType.VM_READY):
                status.set_condition(kind, ConditionStatus.FALSE, "DeadlineExceeded", message)

        self._write(obj, expired)
        self.log.warning("%s", message)
        self.ctx.events.record(obj, "DeadlineExceeded", message, warning=True)

    def _on_exit_observed(
        self, obj: dict[str, Any], sandbox: VMSandbox, exit_code: int | None, vm_lost: str | None
    ) -> float | None:
        """The container exited (``exit_code``) or its VM vanished (``vm_lost`` says how).

        The end is written to the local record first, then the VM is torn down, then the status
        is written: a status write that fails (or an agent restart) in between can neither lose
        the exit code nor let a sandbox that must not restart run again."""
        finished = self.container.finished_at if self.container else None
        ran = time.monotonic() - self._run_started if self._run_started else 0.0
        failed = vm_lost is not None or exit_code != 0
        policy = sandbox.spec.restart_policy
        restart = should_restart(policy, failed)
        if vm_lost is not None:
            reason, message = "VMLost", f"{vm_lost}; the container's exit status is unknown"
        elif exit_code == 0:
            reason, message = "Completed", "the container exited with code 0"
        else:
            reason, message = "Error", f"the container exited with code {exit_code}"
        end = ContainerEnd.model_validate(
            {
                "exit_code": exit_code,
                "reason": reason,
                "message": message,
                "restart": restart,
                "finished_at": finished or now(),
            }
        )
        self._record_end(end)
        self._teardown("the container ended", keep_bundle=False)
        if ran > BACKOFF_RESET_SECONDS:
            self._consecutive = 0
        delay = 0.0
        if restart:
            self._consecutive += 1
            delay = backoff_delay(
                self._consecutive,
                self.ctx.config.restart_backoff_seconds,
                self.ctx.config.restart_backoff_max_seconds,
            )
            self._restart_at = time.monotonic() + delay
            self.ctx.metrics.restarts.inc()
        self._write(obj, _ended(end, self.cid, policy, delay))
        self.ctx.events.record(
            obj,
            "BackOff" if restart else reason,
            message + (f"; restarting in {delay:g}s" if restart else ""),
            warning=failed,
        )
        self.log.info("%s%s", message, f"; restarting in {delay:g}s" if restart else "")
        return delay if restart else IDLE

    def _record_end(self, end: ContainerEnd) -> None:
        record = self._ensure_record()
        record.finished = end
        self._save_record()

    def _report_end(self, obj: dict[str, Any], sandbox: VMSandbox, end: ContainerEnd) -> float | None:
        """A run that ended for good (per the local record): report it if the status does not yet;
        never start it again."""
        phase = sandbox.status.phase
        if (phase is None or not phase.finished) and not self.has_pending():
            self.log.info("reporting the recorded end of the last run: %s", end.message)
            self._write(obj, _ended(end, self.cid, sandbox.spec.restart_policy, 0.0))
        return IDLE

    # ---- fencing -----------------------------------------------------------------------

    def _cut_off(self, obj: dict[str, Any], sandbox: VMSandbox, fence: Fence) -> float | None:
        """The agent cannot reach the API server: stop what the operator will run elsewhere, start
        nothing, and keep watching what stays (its end is recorded and reported later)."""
        poll = self.ctx.config.poll_interval_seconds
        if not fence.applies_to(sandbox.spec.restart_policy):
            return self._monitor(obj, sandbox) if self.container is not None else poll
        if self.container is None and not (self.record is not None and self.record.container_created):
            return poll
        why = fence.describe()
        record = self._ensure_record()
        record.fenced_at = datetime.now(UTC)
        self._save_record()
        self._teardown(f"fenced: {why}")
        self._restart_at = None
        self.ctx.metrics.fenced.inc()
        self.log.warning("VM stopped (fencing): %s", why)
        self.ctx.events.record(obj, StatusReason.FENCED, f"VM stopped: {why}", warning=True)
        return poll

    # ---- teardown ----------------------------------------------------------------------

    def _teardown(self, why: str, *, keep_bundle: bool = False) -> None:
        """Stop the container and VM and free the bundle; the log stays until the sandbox is deleted."""
        self._settle()
        had = self.ctx.runtimes.destroy(self.cid)
        self.container = None
        if self.ctx.network is not None:
            self.ctx.network.detach(self.uid)
        self.ctx.admission.release(self.uid)
        if had:
            self.log.info("VM torn down (%s)", why)
        if self.record is not None and self.record.container_created:
            self.record.container_created = self.record.container_started = False
            with contextlib.suppress(OSError):
                self._save_record()
        if not keep_bundle:
            import shutil

            shutil.rmtree(self.ctx.records.bundle_dir(self.uid), ignore_errors=True)


def _unchanged(_status: VMSandboxStatus) -> None:
    """A write of nothing new: sends only the changes still pending."""


def _still_running(status: VMSandboxStatus) -> None:
    """Undo a NodeLost verdict on a sandbox whose container never stopped."""
    if status.phase is Phase.FAILED and status.reason == StatusReason.NODE_LOST:
        status.phase = Phase.RUNNING
        status.reason = None
        status.message = None
        status.set_condition(ConditionType.READY, ConditionStatus.TRUE, "Running")


def _ended(end: ContainerEnd, cid: str, policy: RestartPolicy, delay: float) -> Mutation:
    """The status change for a run that ended as ``end`` says (restarting after ``delay``)."""
    failed = end.reason != "Completed"

    def ended(status: VMSandboxStatus) -> None:
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

    return ended


def _older(obj: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """Whether ``obj`` is an earlier version of the same object than ``than``.

    The watch delivers events in resourceVersion order but may deliver ones older than a write
    the worker has already seen answered. resourceVersions are etcd revisions, so they compare
    as integers; anything that does not parse as one is taken as new.
    """
    if than is None or obj["metadata"].get("uid") != than["metadata"].get("uid"):
        return False
    mine, other = obj["metadata"].get("resourceVersion", ""), than["metadata"].get("resourceVersion", "")
    return mine.isdigit() and other.isdigit() and int(mine) < int(other)
