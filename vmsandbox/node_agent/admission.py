"""Local admission: the agent starts a sandbox only if the node can hold it.

The operator schedules against the capacity the agent publishes, but a placement the operator
did not make (a label set where no admission policy stops it) or a stale view must not make
the agent overcommit its node. Every sandbox that holds a VM (or is starting one) holds its
vCPUs and memory here until its VM is torn down.
"""

from __future__ import annotations

import threading

from vmsandbox.api.node import NodeCapacity
from vmsandbox.api.reasons import StatusReason
from vmsandbox.node_agent.errors import SandboxFailure
from vmsandbox.node_agent.policy import HOST_RESOURCES


class OutOfCapacity(SandboxFailure):
    """Only another sandbox's end frees what this one asks: retried later than a hiccup."""

    step = "admission"
    reason = StatusReason.OUT_OF_CAPACITY
    retry_policy = HOST_RESOURCES


class LocalAdmission:
    def __init__(self, capacity: NodeCapacity, node: str) -> None:
        self.capacity = capacity
        self.node = node
        self._held: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def admit(self, uid: str, vcpus: int, memory_mib: int) -> None:
        """Holds the resources for ``uid`` (again: no change), or raises :class:`OutOfCapacity`."""
        with self._lock:
            if uid in self._held:
                return
            used_cpu = sum(c for c, _ in self._held.values())
            used_mem = sum(m for _, m in self._held.values())
            short = []
            if used_cpu + vcpus > self.capacity.vcpus:
                short.append(
                    f"{vcpus} vCPUs asked, {self.capacity.vcpus - used_cpu} of {self.capacity.vcpus} free"
                )
            if used_mem + memory_mib > self.capacity.memory_mib:
                free = self.capacity.memory_mib - used_mem
                short.append(f"{memory_mib} MiB asked, {free} of {self.capacity.memory_mib} MiB free")
            if short:
                raise OutOfCapacity(f"node {self.node} cannot hold this sandbox: {'; '.join(short)}")
            self._held[uid] = (vcpus, memory_mib)

    def hold(self, uid: str, vcpus: int, memory_mib: int) -> None:
        """Counts a VM that already runs (adopted after a restart), whether or not it fits."""
        with self._lock:
            self._held[uid] = (vcpus, memory_mib)

    def release(self, uid: str) -> None:
        with self._lock:
            self._held.pop(uid, None)
