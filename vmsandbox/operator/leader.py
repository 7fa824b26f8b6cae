"""One active replica: leader election over a ``coordination.k8s.io/v1`` Lease.

kopf's peering pauses every peer of equal priority, so it cannot pick one of two identical
replicas. This follows client-go's leader election: the holder renews every retry period;
a candidate takes the Lease over once it has seen the same record unchanged for a whole
lease duration (measured on its own clock, so clock skew between replicas does not matter);
every write is a compare-and-swap on resourceVersion. A leader that could not renew within
the renew deadline stops acting before any other replica may take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from vmsandbox.kube import ApiError
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.leases import lease_body, lease_spec, micro_time
from vmsandbox.kube.patches import same_version
from vmsandbox.kube.paths import lease_path

log = logging.getLogger("vmsandbox.operator.leader")


@dataclass(eq=False, repr=False)
class LeaderElector:
    client: AsyncClient
    _: KW_ONLY
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    on_started: Callable[[], Awaitable[None]] | None = None
    on_stopped: Callable[[], Awaitable[None]] | None = None
    _leading: bool = field(init=False, default=False)
    #: Monotonic time of our last successful acquire/renew.
    _renewed_at: float = field(init=False, default=0.0)
    #: (holder, renewTime) last seen.
    _observed: tuple[str, str] | None = field(init=False, default=None)
    _observed_at: float = field(init=False, default=0.0)
    changed: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    @property
    def leading(self) -> bool:
        """True only while the last renewal is recent enough that no other replica can have taken over."""
        return self._leading and time.monotonic() - self._renewed_at < self.renew_deadline

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    ok = await self._try_acquire_or_renew()
                except ApiError as exc:
                    log.warning("leader election: %s", exc)
                    ok = False
                if ok:
                    self._renewed_at = time.monotonic()
                    if not self._leading:
                        self._leading = True
                        log.info(
                            "%s became the leader (lease %s/%s)", self.identity, self.namespace, self.name
                        )
                        self.changed.set()
                        if self.on_started:
                            await self.on_started()
                elif self._leading:
                    holder = self._observed[0] if self._observed else ""
                    if holder and holder != self.identity:
                        await self._step_down(f"lease taken by {holder}")
                    elif not self.leading:
                        await self._step_down("could not renew the lease in time")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.retry_period)
        finally:
            if self._leading:
                await self._step_down("stopping")
                await self._release()

    async def _step_down(self, why: str) -> None:
        self._leading = False
        log.warning("%s stopped leading: %s", self.identity, why)
        self.changed.set()
        if self.on_stopped:
            await self.on_stopped()

    def _spec(self, lease: dict[str, Any] | None, now: str) -> dict[str, Any]:
        return lease_spec(self.identity, self.lease_duration, now, (lease or {}).get("spec"))

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time()
        try:
            lease = await self.client.get(lease_path(self.namespace, self.name))
        except ApiError as exc:
            if not exc.not_found:
                raise
            body = lease_body(self.namespace, self.name, self._spec(None, now))
            try:
                await self.client.create(lease_path(self.namespace), body)
            except ApiError as exc2:
                if exc2.conflict:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        if holder and holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if time.monotonic() - self._observed_at < duration:
                return False
        ops = [
            same_version(lease["metadata"]),
            {"op": "replace" if "spec" in lease else "add", "path": "/spec", "value": self._spec(lease, now)},
        ]
        try:
            await self.client.json_patch(lease_path(self.namespace, self.name), ops)
        except ApiError as exc:
            if exc.conflict:
                return False
            raise
        self._observed = (self.identity, now)
        self._observed_at = time.monotonic()
        return True

    async def _release(self) -> None:
        """Hand the Lease back on a clean stop, so the other replica need not wait out the duration."""
        try:
            lease = await self.client.get(lease_path(self.namespace, self.name))
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            ops = [
                same_version(lease["metadata"]),
                {"op": "replace", "path": "/spec/holderIdentity", "value": ""},
                {"op": "replace", "path": "/spec/leaseDurationSeconds", "value": 1},
            ]
            await self.client.json_patch(lease_path(self.namespace, self.name), ops)
        except ApiError as exc:
            log.debug("lease not released: %s", exc)
