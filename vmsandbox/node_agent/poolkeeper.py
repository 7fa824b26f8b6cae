"""Keeps this node's share of every VMSandboxPool ready, and hands members to claiming sandboxes.

Each pass lists the pools (all namespaces), reads this node's ``status.nodes[].desired`` and
boots members up to it in the background, deletes idle members of pools that are gone or
scaled down, and publishes what is ready in the Node annotation ``vmsandbox.io/pools``. A
member is a VM booted through the runtime with no container (vmsandbox.runtime.members); it
holds its vCPUs and memory in local admission like any VM. Members survive an agent restart:
their records are adopted while their VMs run, and dropped otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from vmsandbox.api.constants import POOLS_ANNOTATION
from vmsandbox.api.pool import MAX_REPLICAS, PoolMode, PoolReport, render_pool_reports
from vmsandbox.api.reasons import StatusReason
from vmsandbox.api.resource import VMSandbox
from vmsandbox.errors import VMSandboxError
from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.node_agent import snapshots
from vmsandbox.node_agent.admission import LocalAdmission, OutOfCapacity
from vmsandbox.node_agent.kube import Kube
from vmsandbox.node_agent.members import MemberRecord, MemberStore
from vmsandbox.node_agent.poolmetrics import PoolMetrics
from vmsandbox.node_agent.poolview import PoolView, mismatch, pool_view
from vmsandbox.node_agent.runtimes import Runtimes
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.members import new_member_id

log = logging.getLogger("vmsandbox.node_agent.pools")

#: Members booting at once on this node: boots are CPU-bound and compete with cold starts.
MAX_BOOTING = 2
#: A member handed to a sandbox whose create never took it (the launch failed before) is
#: deleted after this long.
TAKE_GRACE_SECONDS = 300.0


@dataclass(frozen=True)
class Claim:
    """A pool's answer to a sandbox: a member to take, or why it starts cold."""

    member_id: str | None
    reason: StatusReason
    message: str
    #: A snapshot pool's snapshot the sandbox's VM is restored from.
    snapshot: str | None = None

    @property
    def warm(self) -> bool:
        return self.member_id is not None or self.snapshot is not None


@dataclass(eq=False, repr=False, kw_only=True)
class PoolKeeper:
    kube: Kube
    runtimes: Runtimes
    admission: LocalAdmission
    store: MemberStore
    metrics: PoolMetrics
    node: str
    default_hypervisor: str
    usable_hypervisors: list[str]
    has_network: bool
    sync_seconds: float
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _members: dict[str, MemberRecord] = field(init=False, default_factory=dict)
    #: Members handed to a sandbox, by when: until the runtime's create took them.
    _taken: dict[str, float] = field(init=False, default_factory=dict)
    _views: dict[str, PoolView] = field(init=False, default_factory=dict)
    #: Pools by namespace/name as the pool watch last saw them; None until it has listed.
    _watched: dict[str, dict[str, Any]] | None = field(init=False, default=None)
    _published: str | None = field(init=False, default=None)
    _refused: dict[str, str] = field(init=False, default_factory=dict)
    _booting: threading.BoundedSemaphore = field(
        init=False, default_factory=lambda: threading.BoundedSemaphore(MAX_BOOTING)
    )
    _wake: threading.Event = field(init=False, default_factory=threading.Event)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="pools", daemon=True)
        self.metrics.track(self.counts, self.paused)

    # ---- life ----------------------------------------------------------------------------

    def start(self) -> None:
        self.adopt()
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ---- the pool watch's view (vmsandbox.node_agent.watch.PoolWatch) --------------------

    def resync(self, items: list[dict[str, Any]]) -> None:
        """The watch listed every pool: from now on passes read its copies, not the server."""
        with self._lock:
            self._watched = {_key(obj): obj for obj in items}
        self.wake()

    def observe(self, obj: dict[str, Any]) -> None:
        """A pool was added or changed."""
        with self._lock:
            if self._watched is not None:
                self._watched[_key(obj)] = obj
        self.wake()

    def forget(self, obj: dict[str, Any]) -> None:
        """A pool was deleted."""
        with self._lock:
            if self._watched is not None:
                self._watched.pop(_key(obj), None)
        self.wake()

    def _pools(self) -> list[dict[str, Any]]:
        """Every pool: the watch's copies once it has listed, else a list from the server."""
        with self._lock:
            if self._watched is not None:
                return list(self._watched.values())
        items, _ = self.kube.list_pools()
        return items

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:
                log.warning("pool sync failed: %s", exc)
            self._wake.wait(self.sync_seconds)
            self._wake.clear()

    # ---- adoption ------------------------------------------------------------------------

    def adopt(self) -> None:
        """After a restart: keep members whose VM still runs idle (or whose snapshot is
        complete); drop the rest."""
        for record in self.store.load_all():
            if record.kind == "snapshot":
                self._adopt_snapshot(record)
                continue
            state = self.runtimes.state(record.member_id)
            if record.ready and state is not None and state.status == "created":
                self.admission.hold(record.member_id, record.vcpus, record.memory_mib)
                with self._lock:
                    self._members[record.member_id] = record
                vmm = state.vm.vmm_pid if state.vm else None
                log.info("adopted pool member %s of %s (VMM pid %s)", record.member_id, record.pool, vmm)
                continue
            log.info("dropping pool member %s of %s: its VM is gone", record.member_id, record.pool)
            self._destroy(record)

    def _adopt_snapshot(self, record: MemberRecord) -> None:
        if record.ready and snapshots.complete(self._runtime(record), record.member_id):
            with self._lock:
                self._members[record.member_id] = record
            log.info("adopted pool snapshot %s of %s", record.member_id, record.pool)
            return
        log.info("dropping pool snapshot %s of %s: it is incomplete", record.member_id, record.pool)
        self._destroy(record)

    def _runtime(self, record: MemberRecord) -> Runtime:
        return self.runtimes.for_hypervisor(record.hypervisor)

    def member_ids(self) -> set[str]:
        with self._lock:
            return set(self._members) | set(self._taken)

    # ---- reconcile -----------------------------------------------------------------------

    def sync(self) -> None:
        views = {}
        for obj in self._pools():
            view = pool_view(obj, self.node, self.default_hypervisor)
            if view is not None:
                views[view.key] = view
        with self._lock:
            self._views = views
            members = list(self._members.values())
        for record in members:
            view = views.get(record.pool)
            if (view is None or view.uid != record.pool_uid) and record.ready:
                self._delete_idle(record, "its pool is gone")
        for view in views.values():
            self._reconcile(view)
        self._collect_untaken()
        self.publish()

    def _collect_untaken(self) -> None:
        """Delete members handed out but never taken: their sandbox failed before its create."""
        now = time.monotonic()
        with self._lock:
            taken = dict(self._taken)
        for member_id, since in taken.items():
            state = self.runtimes.state(member_id)
            if state is not None and state.status == "created" and now - since < TAKE_GRACE_SECONDS:
                continue
            if state is not None:
                log.info("deleting pool member %s: claimed but never taken", member_id)
                self.runtimes.destroy(member_id)
            with self._lock:
                self._taken.pop(member_id, None)

    def _refuse(self, view: PoolView) -> str | None:
        """Why this node keeps no members of ``view`` (logged once per pool and reason)."""
        shape = view.shape
        why = None
        if shape.hypervisor not in self.usable_hypervisors:
            why = f"hypervisor {shape.hypervisor} is not usable on node {self.node}"
        elif self.has_network and shape.hypervisor == "process":
            # A VM's NIC is hot-plugged at the claim; the process backend's agent is started
            # inside its sandbox's network namespace, which does not exist before the claim.
            why = "the process backend keeps no members on a node with a sandbox network"
        elif view.mode == PoolMode.SNAPSHOT and shape.hypervisor == "process":
            why = "the process backend has no snapshots"
        if why is not None and self._refused.get(view.key) != why:
            self._refused[view.key] = why
            log.warning("pool %s: no members on node %s: %s", view.key, self.node, why)
        return why

    def _reconcile(self, view: PoolView) -> None:
        if view.desired == 0 and not self._of(view):
            return
        refused = self._refuse(view) is not None
        mine = self._of(view)
        want = 0 if refused else view.desired
        if view.mode == PoolMode.SNAPSHOT:  # one snapshot serves every claim on this node
            want = min(want, 1)
        idle = [m for m in mine if m.ready]
        extra = len(mine) - want
        for record in sorted(idle, key=lambda m: m.created_at, reverse=True)[: max(0, extra)]:
            self._delete_idle(record, "its pool was scaled down")
        if view.paused:
            return
        for _ in range(max(0, want - len(mine))):
            if not self._booting.acquire(blocking=False):
                return
            snapshot = view.mode == PoolMode.SNAPSHOT
            record = MemberRecord(
                member_id=new_member_id(),
                kind="snapshot" if snapshot else "booted",
                pool=view.key,
                pool_uid=view.uid,
                hypervisor=view.shape.hypervisor,
                vcpus=view.shape.vcpus,
                memory_mib=view.shape.memory_mib,
                network_mode=view.shape.network_mode,
            )
            try:  # a snapshot holds no VM once made: only its files, which capacity does not count
                self.admission.admit(record.member_id, record.vcpus, record.memory_mib)
            except OutOfCapacity as exc:
                self._booting.release()
                log.info("pool %s: not booting a member: %s", view.key, exc)
                return
            with self._lock:
                self._members[record.member_id] = record
            self.store.save(record)
            threading.Thread(target=self._boot, args=(record,), name="pool-boot", daemon=True).start()

    def _of(self, view: PoolView) -> list[MemberRecord]:
        with self._lock:
            return [m for m in self._members.values() if m.pool == view.key and m.pool_uid == view.uid]

    def _boot(self, record: MemberRecord) -> None:
        t0 = time.monotonic()
        try:
            runtime = self._runtime(record)
            if record.kind == "snapshot":
                snapshots.make(runtime, record.member_id, record.vcpus, record.memory_mib)
                self.admission.release(record.member_id)
            else:
                runtime.boot_member(record.member_id, record.vcpus, record.memory_mib)
        except (VMSandboxError, HypervisorError, OSError) as exc:
            log.warning("pool %s: booting member %s failed: %s", record.pool, record.member_id, exc)
            self.metrics.boot_failures.labels(*record.pool.split("/", 1)).inc()
            self._forget(record)
            self._booting.release()
            self._stop.wait(5.0)  # a failing pool is retried by the next pass, not in a tight loop
            return
        self._booting.release()
        record.ready = True
        self.store.save(record)
        seconds = time.monotonic() - t0
        self.metrics.replenish.labels(*record.pool.split("/", 1)).observe(seconds)
        log.info("pool %s: member %s ready in %.0f ms", record.pool, record.member_id, seconds * 1000)
        self._wake.set()

    def _delete_idle(self, record: MemberRecord, why: str) -> None:
        with self._lock:
            if self._members.get(record.member_id) is not record or not record.ready:
                return
            del self._members[record.member_id]
        log.info("pool %s: deleting idle member %s: %s", record.pool, record.member_id, why)
        self._destroy(record)

    def _destroy(self, record: MemberRecord) -> None:
        if record.kind == "snapshot":
            snapshots.remove(self._runtime(record), record.member_id)
        else:
            self.runtimes.destroy(record.member_id)
        self._forget(record)

    def _forget(self, record: MemberRecord) -> None:
        with self._lock:
            if self._members.get(record.member_id) is record:
                del self._members[record.member_id]
        self.admission.release(record.member_id)
        self.store.remove(record.member_id)

    # ---- claims --------------------------------------------------------------------------

    def claim(self, namespace: str, name: str, sandbox: VMSandbox) -> Claim:
        """Take a ready member of pool ``namespace/name`` for ``sandbox``, or say why not."""
        key = f"{namespace}/{name}"
        view, refusal = self._fitting(namespace, name, sandbox)
        if view is None:
            assert refusal is not None
            return self._cold(key, *refusal)
        member = self._take(key, view.uid)
        if member is None:
            empty = f"pool {name} has no ready member on node {self.node}"
            return self._cold(key, StatusReason.POOL_EMPTY, empty)
        if member.kind == "snapshot":
            self.metrics.claims.labels(namespace, name, "warm", StatusReason.CLAIMED_FROM_POOL).inc()
            message = f"restored from pool {name}'s snapshot {member.member_id}"
            return Claim(None, StatusReason.CLAIMED_FROM_POOL, message, snapshot=member.member_id)
        self.admission.release(member.member_id)
        self.store.remove(member.member_id)
        with self._lock:
            self._taken[member.member_id] = time.monotonic()
        self.metrics.claims.labels(namespace, name, "warm", StatusReason.CLAIMED_FROM_POOL).inc()
        try:  # the operator places claims by what is ready: tell it now
            self.publish()
        except Exception as exc:
            log.warning("publishing pools after a claim failed: %s", exc)
        self.wake()  # replace the member now, in the background
        message = f"claimed member {member.member_id} of pool {name}"
        return Claim(member.member_id, StatusReason.CLAIMED_FROM_POOL, message)

    def _fitting(
        self, namespace: str, name: str, sandbox: VMSandbox
    ) -> tuple[PoolView | None, tuple[StatusReason, str] | None]:
        """The pool, read fresh, when the sandbox fits it; else why it starts cold."""
        try:
            obj = self.kube.get_pool(namespace, name)
        except Exception as exc:
            return None, (StatusReason.POOL_NOT_FOUND, f"pool {name} could not be read: {exc}")
        if obj is None:
            return None, (StatusReason.POOL_NOT_FOUND, f"no VMSandboxPool {name} in namespace {namespace}")
        view = pool_view(obj, self.node, self.default_hypervisor)
        if view is None:
            return None, (StatusReason.POOL_SHAPE_MISMATCH, f"the template of pool {name} cannot be read")
        why = mismatch(view, sandbox, self.default_hypervisor)
        if why is not None:
            return None, (StatusReason.POOL_SHAPE_MISMATCH, f"the sandbox does not fit pool {name}: {why}")
        return view, None

    def _take(self, key: str, uid: str) -> MemberRecord | None:
        """The oldest ready member of the pool, no longer the pool's."""
        with self._lock:
            ready = [m for m in self._members.values() if m.pool == key and m.pool_uid == uid and m.ready]
            if not ready:
                return None
            member = min(ready, key=lambda m: m.created_at)
            if member.kind == "booted":  # a snapshot stays: each claim restores a copy of it
                del self._members[member.member_id]
            return member

    def _cold(self, key: str, reason: StatusReason, message: str) -> Claim:
        namespace, name = key.split("/", 1)
        self.metrics.claims.labels(namespace, name, "cold", reason).inc()
        return Claim(None, reason, message)

    def returned(self, member_id: str) -> None:
        """A claim's create failed: its member is idle again if the runtime kept it, else gone."""
        state = self.runtimes.state(member_id)
        if state is None or state.status != "created":
            return
        log.info("pool member %s was not taken; deleting it", member_id)
        self.runtimes.destroy(member_id)

    # ---- publishing ----------------------------------------------------------------------

    def counts(self) -> dict[str, tuple[int, int]]:
        """``namespace/pool`` -> (ready, booting) members on this node."""
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            for member in self._members.values():
                ready, booting = out.get(member.pool, (0, 0))
                out[member.pool] = (ready + member.ready, booting + (not member.ready))
        return out

    def paused(self) -> dict[str, bool]:
        """``namespace/pool`` -> whether the pool, as this agent last saw it, is paused."""
        with self._lock:
            return {key: view.paused for key, view in self._views.items()}

    def reports(self) -> dict[str, PoolReport]:
        """Ready members per pool; a ready snapshot serves every claim, so it reports the share."""
        counts = self.counts()
        with self._lock:
            views = dict(self._views)
        reports = {}
        for key, view in views.items():
            if view.desired == 0 and key not in counts:
                continue
            ready = counts.get(key, (0, 0))[0]
            if view.mode == PoolMode.SNAPSHOT and ready:
                ready = view.desired
            reports[key] = PoolReport(uid=view.uid, ready=min(ready, MAX_REPLICAS))
        return reports

    def publish(self) -> None:
        value = render_pool_reports(self.reports())
        if value == self._published:
            return
        self.kube.patch_node(self.node, {"metadata": {"annotations": {POOLS_ANNOTATION: value}}})
        self._published = value


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
