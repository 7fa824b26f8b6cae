"""The stages of a launch, from Scheduled to a running container: check, pull, bundle, network,
create the VM, start. Each stage is short and says what undoes it.

A stage that fails raises; the worker then tears down whatever the stages before it made (VM,
network, admission, bundle: :meth:`SandboxWorker.teardown`), and the create stage itself clears
the record's ``container_created`` so a failed create is never adopted. A deletion noticed
between stages stops the launch (:class:`Stopped`); the deletion's teardown cleans up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vmsandbox.api.constants import PROCESS_BACKEND_ALLOWED, PROCESS_BACKEND_LABEL
from vmsandbox.api.reasons import EventReason
from vmsandbox.api.resource import VMSandbox
from vmsandbox.api.spec import PullPolicy
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
from vmsandbox.node_agent import warmstart
from vmsandbox.node_agent.bundle import build_bundle
from vmsandbox.node_agent.context import AgentContext
from vmsandbox.node_agent.errors import HypervisorNotAllowed
from vmsandbox.node_agent.images import Image
from vmsandbox.node_agent.logs import SandboxLog
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.network.attach import attach_sandbox
from vmsandbox.node_agent.poolkeeper import Claim
from vmsandbox.node_agent.prefetch import Prefetch
from vmsandbox.node_agent.records import SandboxRecord
from vmsandbox.node_agent.statusedits import creating
from vmsandbox.node_agent.statuswriter import Mutation
from vmsandbox.runtime import ContainerState
from vmsandbox.runtime.state import Timings

Obj = dict[str, Any]


class Stopped(Exception):
    """The sandbox is being deleted (or is no longer this node's): the launch stops here."""


class Host(Protocol):
    """What a launch needs from its worker."""

    ctx: AgentContext
    uid: str
    namespace: str
    log: SandboxLog

    @property
    def cid(self) -> str: ...

    def ensure_record(self, hypervisor: str | None = None) -> SandboxRecord: ...

    def save_record(self) -> None: ...

    def deleting(self) -> bool: ...

    def write_later(self, mutate: Mutation) -> None: ...

    def take_prefetch(self, reference: str, policy: PullPolicy) -> Prefetch | None: ...


@contextlib.contextmanager
def timed(metrics: AgentMetrics, step: str) -> Iterator[None]:
    """Time one of the agent's own steps (``vmsandbox_agent_step_seconds``)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        metrics.step.labels(step).observe(time.monotonic() - t0)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Created:
    """What the create stage made, for the status written once the container runs."""

    state: ContainerState
    claim: Claim | None
    image_s: float
    network_status: Any
    network_s: float
    before_create_ms: float


@dataclass(frozen=True)
class Started:
    state: ContainerState
    created: Created
    total_s: float


class Launch:
    """One attempt to get a sandbox's container running."""

    def __init__(self, host: Host, obj: Obj, sandbox: VMSandbox) -> None:
        self.host = host
        self.ctx = host.ctx
        self.obj = obj
        self.sandbox = sandbox
        spec = sandbox.spec
        self.hypervisor = spec.hypervisor.value if spec.hypervisor else self.ctx.config.default_hypervisor
        self.generation: int | None = obj["metadata"].get("generation")
        self.t_pickup = time.monotonic()

    def timed(self, step: str) -> contextlib.AbstractContextManager[None]:
        return timed(self.ctx.metrics, step)

    def stop_if_deleting(self) -> None:
        if self.host.deleting():
            raise Stopped

    # ---- stages, in order ----------------------------------------------------------------

    def announce(self, refenced: bool) -> None:
        """Phase Creating, written in the background while the stages run."""
        self.host.write_later(creating(self.hypervisor, self.generation, refenced))

    def check(self) -> tuple[SandboxRecord, Claim | None]:
        """The backend may run here, a pool member (or none) is claimed, and the node has room.
        Undone by teardown (admission)."""
        cfg = self.ctx.config
        hypervisor = self.hypervisor
        if hypervisor not in cfg.allowed_hypervisors:
            raise HypervisorNotAllowed(
                f"hypervisor {hypervisor!r} is not allowed on node {cfg.node_name} "
                f"(allowed: {', '.join(cfg.allowed_hypervisors)})"
            )
        if hypervisor not in self.ctx.usable_hypervisors:
            why = self.ctx.hypervisor_refusals.get(hypervisor, "it is not installed")
            raise HypervisorNotAllowed(f"hypervisor {hypervisor!r} cannot run on node {cfg.node_name}: {why}")
        if hypervisor == "process":
            self._check_process_backend()
        resources = self.sandbox.spec.resources
        claim = warmstart.decide(self.ctx.pools, self.sandbox)
        self.ctx.admission.admit(self.host.uid, resources.vcpus, resources.memory_mib)
        record = self.host.ensure_record(hypervisor)
        record.finished = record.fenced_at = None
        self.host.save_record()
        return record, claim

    def _check_process_backend(self) -> None:
        """The process backend runs containers without a VM: only where an admin allowed it per namespace."""
        namespace = self.host.namespace
        found = self.ctx.writer.kube.get_namespace(namespace)
        labels = ((found or {}).get("metadata") or {}).get("labels") or {}
        if labels.get(PROCESS_BACKEND_LABEL) != PROCESS_BACKEND_ALLOWED:
            raise HypervisorNotAllowed(
                f"hypervisor 'process' runs containers without a VM (namespaces only); namespace "
                f"{namespace} does not allow it (an administrator labels the namespace "
                f"{PROCESS_BACKEND_LABEL}={PROCESS_BACKEND_ALLOWED})"
            )

    def pull(self, record: SandboxRecord) -> tuple[Image, float]:
        """The image, held in the cache by the record from here on (nothing to undo)."""
        spec = self.sandbox.spec
        self.ctx.events.record(self.obj, EventReason.PULLING, f"pulling image {spec.image}")
        t0 = time.monotonic()
        prefetched = self.host.take_prefetch(spec.image, spec.image_pull_policy)
        if prefetched is not None:
            image = prefetched.take()
        else:
            image = self.ctx.images.ensure(spec.image, spec.image_pull_policy)
        image_s = time.monotonic() - t0
        metrics = self.ctx.metrics
        if image.pulled_bytes:
            metrics.pull_bytes.inc(image.pulled_bytes)
            metrics.pull_seconds.observe(image.pull_seconds)
        metrics.boot_stage.labels("image").observe(image_s)
        try:
            record.image_digest = image.digest
            self.host.save_record()
        finally:
            self.ctx.images.release(image.digest)
        self.ctx.events.record(self.obj, EventReason.PULLED, f"image {spec.image} ready ({image.digest})")
        return image, image_s

    def bundle(self, image: Image, claim: Claim | None) -> Path:
        """The OCI bundle (removed by teardown)."""
        with self.timed("bundle"):
            bundle = build_bundle(self.ctx.records.bundle_dir(self.host.uid), self.sandbox, image)
        if claim is not None and claim.warm:
            warmstart.mark_bundle(bundle, claim)
        return bundle

    def create(self, record: SandboxRecord, image: Image, bundle: Path, claim: Claim | None) -> Created:
        """Network, then the VM and the container in it. Undone by teardown; a failed create
        also clears the record's ``container_created``."""
        with self.timed("network"):
            attachment, network_status, network_s = attach_sandbox(
                self.ctx.network, self.host.uid, self.sandbox, self.hypervisor
            )
        record.container_created, record.container_started = True, False
        self.host.save_record()
        with self._start_slot(record):
            t_create = time.monotonic()
            try:
                with self.timed("runtimeCreate"):
                    state, claim = warmstart.create(
                        self.ctx.runtimes.for_hypervisor(self.hypervisor),
                        self.ctx.pools,
                        claim,
                        self.host.cid,
                        bundle,
                        log_path=self.ctx.records.log_path(self.host.uid),
                        network=attachment,
                        image_digest=image.digest,
                    )
            except VMSandboxError:
                self._not_created(record)
                raise
        if claim is not None and claim.warm:
            record.pool = f"{self.host.namespace}/{self.sandbox.spec.pool}"
            self.host.save_record()
        self._observe_boot(state.timings)
        before = ms(t_create - self.t_pickup)
        return Created(state, claim, 0.0, network_status, network_s, before)

    @contextlib.contextmanager
    def _start_slot(self, record: SandboxRecord) -> Iterator[None]:
        """One of the node's ``maxConcurrentStarts``; a deletion while waiting for it stops here."""
        t_slot = time.monotonic()
        with self.ctx.start_slots:
            self.ctx.metrics.step.labels("startSlotWait").observe(time.monotonic() - t_slot)
            if self.host.deleting():
                self._not_created(record)
                raise Stopped
            yield

    def _not_created(self, record: SandboxRecord) -> None:
        record.container_created = False
        self.host.save_record()

    def _observe_boot(self, timings: Timings) -> None:
        for stage in ("vmmStart", "vmBoot", "agentReady", "containerCreate"):
            self.ctx.metrics.boot_stage.labels(stage).observe(getattr(timings, stage) / 1000)

    def start(self, record: SandboxRecord) -> ContainerState:
        """The container's process (from here on it may have run: a vanished one is reported)."""
        record.container_started = True
        self.host.save_record()
        with self.timed("runtimeStart"):
            return self.ctx.runtimes.for_hypervisor(self.hypervisor).start(self.host.cid)

    # ---- what is reported ----------------------------------------------------------------

    def vm_status(self, state: ContainerState) -> VMStatus:
        vm = state.vm
        return VMStatus(id=vm.vm_id if vm else None, vmm_pid=vm.vmm_pid if vm else None)

    def running(self, done: Started) -> Mutation:
        """The one status write after the start: VM booted, container started, Running."""
        generation, cid = self.generation, self.host.cid
        created, started, total_s = done.created, done.state, done.total_s
        booted = self._booted(created, self.vm_status(created.state))

        def mutate(status: VMSandboxStatus) -> None:
            booted(status)
            status.phase = Phase.RUNNING
            status.container = ContainerStatus(
                id=cid, pid=started.pid or None, started_at=started.started_at or now()
            )
            status.set_condition(
                ConditionType.CONTAINER_READY, ConditionStatus.TRUE, "Started", generation=generation
            )
            status.set_condition(ConditionType.READY, ConditionStatus.TRUE, "Running", generation=generation)
            if status.boot_timings is not None:
                status.boot_timings.total = round((status.boot_timings.schedule or 0) + ms(total_s), 3)

        return mutate

    def _booted(self, created: Created, vm_status: VMStatus) -> Callable[[VMSandboxStatus], None]:
        generation, timings = self.generation, created.state.timings

        def mutate(status: VMSandboxStatus) -> None:
            status.vm = vm_status
            status.network = created.network_status or status.network
            status.set_condition(
                ConditionType.VM_READY, ConditionStatus.TRUE, "Booted", generation=generation
            )
            status.boot_timings = BootTimings(
                schedule=status.boot_timings.schedule if status.boot_timings else None,
                image=ms(created.image_s),
                vmm_start=timings.vmmStart,
                vm_boot=timings.vmBoot,
                agent_ready=timings.agentReady,
                kernel_to_init=timings.kernelToInit,
                init_to_agent_ready=timings.initToAgentReady,
                container_create=timings.containerCreate,
                network=ms(created.network_s) if created.network_status else None,
            )
            warmstart.record_outcome(status, created.claim, timings, generation, created.before_create_ms)

        return mutate

    # ---- the whole launch ----------------------------------------------------------------

    def run(self, refenced: bool, on_created: Callable[[ContainerState], None]) -> Started:
        """Every stage in order, up to the started container.

        ``on_created`` hands the worker the container as soon as it exists, so a failure or a
        deletion after the create tears it down."""
        self.announce(refenced)
        record, claim = self.check()
        image, image_s = self.pull(record)
        bundle = self.bundle(image, claim)
        self.stop_if_deleting()
        created = self.create(record, image, bundle, claim)
        created.image_s = image_s
        on_created(created.state)
        vm = self.vm_status(created.state)
        self.ctx.events.record(
            self.obj, EventReason.VM_BOOTED, f"{self.hypervisor} VM {vm.id} booted (VMM pid {vm.vmm_pid})"
        )
        self.stop_if_deleting()
        started = self.start(record)
        total_s = time.monotonic() - self.t_pickup
        self.ctx.metrics.boot_stage.labels("total").observe(total_s)
        return Started(started, created, total_s)
