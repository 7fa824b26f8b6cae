"""Keeps one worker per sandbox of this node, and cleans up what no sandbox owns any more.

At start-up it compares the first list from the API server with what the node holds (records
under the state dir, containers under the runtime root): VMs of listed sandboxes are adopted by
their workers; the rest are orphans, torn down after ``orphanGraceSeconds`` unless their
sandbox shows up in the meantime, by a worker for the sandbox that is gone (the same steps as
for a deleted one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from vmsandbox.api.constants import AGENT_FINALIZER
from vmsandbox.node_agent.context import AgentContext
from vmsandbox.node_agent.records import container_id_for
from vmsandbox.node_agent.worker import SandboxWorker

log = logging.getLogger("vmsandbox.node_agent.supervisor")


class Supervisor:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._workers: dict[str, SandboxWorker] = {}
        self._abandoned: set[str] = {r.uid for r in ctx.records.load_all() if r.abandoned}
        self._seen: set[str] = set()
        self._orphan_thread: threading.Thread | None = None

    # ---- events from the watch ---------------------------------------------------------

    def observe(self, obj: dict[str, Any], *, listed: bool = False) -> None:
        uid = obj["metadata"]["uid"]
        with self._lock:
            self._seen.add(uid)
            if uid in self._abandoned:
                return
            worker = self._workers.get(uid)
            if worker is None:
                meta = obj["metadata"]
                ours = AGENT_FINALIZER in (meta.get("finalizers") or [])
                if meta.get("deletionTimestamp") and not ours and not self._has_local_state(uid, obj):
                    return
                worker = SandboxWorker(self.ctx, obj, self._worker_done)
                self._workers[uid] = worker
                self.ctx.metrics.workers.set(len(self._workers))
                worker.start()
                return
        worker.update(obj, listed=listed)

    def forget(self, obj: dict[str, Any]) -> None:
        """The object was deleted, or no longer matches this node's selector."""
        uid = obj["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if uid in self._abandoned:
                self._abandoned.discard(uid)
                self.ctx.records.remove(uid)
            if worker is None and self._has_local_state(uid, obj):
                worker = SandboxWorker(self.ctx, obj, self._worker_done)
                self._workers[uid] = worker
                worker.update(None)
                worker.start()
                return
        if worker is not None:
            worker.update(None)

    def sync(self, objs: list[dict[str, Any]]) -> None:
        """A full list (start-up or re-list after 410 Gone): what is missing from it is gone."""
        present = {o["metadata"]["uid"] for o in objs}
        for obj in objs:
            self.observe(obj, listed=True)
        with self._lock:
            missing = [w for uid, w in self._workers.items() if uid not in present]
        for worker in missing:
            worker.update(None)

    def _has_local_state(self, uid: str, obj: dict[str, Any]) -> bool:
        return (
            self.ctx.records.load(uid) is not None
            or (self.ctx.runtimes.root / container_id_for(uid)).exists()
        )

    def _worker_done(self, worker: SandboxWorker) -> None:
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
            record = self.ctx.records.load(worker.uid)
            if record is not None and record.abandoned:
                self._abandoned.add(worker.uid)
            self.ctx.metrics.workers.set(len(self._workers))

    # ---- queries -----------------------------------------------------------------------

    def phase_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(w.phase for w in self._workers.values() if w.phase))

    def worker_for(self, namespace: str, name: str) -> SandboxWorker | None:
        with self._lock:
            return next(
                (w for w in self._workers.values() if (w.namespace, w.name) == (namespace, name)), None
            )

    def uids(self) -> set[str]:
        with self._lock:
            return set(self._workers)

    def worker_count(self) -> int:
        with self._lock:
            return len(self._workers)

    def in_use_digests(self) -> set[str]:
        with self._lock:
            uids = list(self._workers)
        digests = set()
        for uid in uids:
            record = self.ctx.records.load(uid)
            if record is not None and record.image_digest:
                digests.add(record.image_digest)
        return digests

    # ---- orphans -----------------------------------------------------------------------

    def schedule_orphan_sweep(self) -> None:
        """After the first list: tear down, after the grace period, VMs no listed sandbox owns."""
        self._orphan_thread = threading.Thread(target=self._sweep_orphans, name="orphans", daemon=True)
        self._orphan_thread.start()

    def _candidates(self) -> dict[str, str]:
        """container id -> why it looks orphaned (records keyed by uid, containers by id)."""
        with self._lock:
            owned = set(self._workers) | self._seen
        found: dict[str, str] = {}
        for record in self.ctx.records.load_all():
            if record.uid not in owned and not record.abandoned:
                found[record.container_id] = f"sandbox {record.ref} (uid {record.uid}) no longer exists here"
        owned_ids = {container_id_for(uid) for uid in owned}
        if self.ctx.pools is not None:
            owned_ids |= self.ctx.pools.member_ids()
        for cid in self.ctx.runtimes.ids():
            if cid not in owned_ids and cid not in found:
                found[cid] = "no sandbox record names this container"
        return found

    def _sweep_orphans(self) -> None:
        first = self._candidates()
        if first:
            log.warning(
                "%d VM(s) without a sandbox on this node; tearing them down in %.0fs unless claimed: %s",
                len(first),
                self.ctx.config.orphan_grace_seconds,
                ", ".join(sorted(first)),
            )
        time.sleep(self.ctx.config.orphan_grace_seconds)
        still = self._candidates()
        records = {r.container_id: r for r in self.ctx.records.load_all()}
        for cid in sorted(set(first) & set(still)):
            record = records.get(cid)
            if record is not None:
                # The same path as a sandbox that went away: a worker with no object tears it down.
                self.forget(_stub(record.uid, record.namespace, record.name))
            else:
                self.ctx.runtimes.destroy(cid)  # no record: nothing but the container to free
            self.ctx.metrics.orphans.inc()
            log.warning("tearing down orphaned container %s: %s", cid, still[cid])


def _stub(uid: str, namespace: str, name: str) -> dict[str, Any]:
    """The identity of a sandbox the API server no longer lists, from the agent's record of it."""
    return {"metadata": {"uid": uid, "namespace": namespace, "name": name}}
