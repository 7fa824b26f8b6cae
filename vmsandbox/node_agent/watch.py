"""List + watch of this node's sandboxes (filtered by the server with the node label selector)
and of every pool.

Both run :class:`vmsandbox.kube.watch.ResumingWatch`: a closed stream resumes from the last
resourceVersion seen, and a 410 Gone lists again, so the supervisor reconciles against the full
list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from vmsandbox.api.constants import NODE_LABEL
from vmsandbox.kube.watch import Observer, ResumingWatch, apply_event
from vmsandbox.node_agent.kube import Kube
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.supervisor import Supervisor

log = logging.getLogger("vmsandbox.node_agent.watch")


def node_selector(node: str) -> str:
    return f"{NODE_LABEL}={node}"


class PoolObserver(Observer, Protocol):
    def resync(self, items: list[dict[str, Any]]) -> None: ...


def _restarts(metrics: AgentMetrics) -> Callable[[str], None]:
    return lambda why: metrics.watch_restarts.labels(why).inc()


class SandboxWatch(ResumingWatch):
    """This node's sandboxes, handed to the supervisor."""

    def __init__(
        self, kube: Kube, supervisor: Supervisor, metrics: AgentMetrics, *, node: str, timeout_seconds: int
    ) -> None:
        super().__init__(name="watch", timeout_seconds=timeout_seconds, on_restart=_restarts(metrics))
        self.kube = kube
        self.supervisor = supervisor
        self.selector = node_selector(node)
        self._first_list = True

    def _list(self) -> str:
        items, rv = self.kube.list_sandboxes(self.selector)
        self.supervisor.sync(items)
        if self._first_list:
            self._first_list = False
            self.supervisor.schedule_orphan_sweep()
        self.synced.set()
        log.info("listed %d sandbox(es) for %s at resourceVersion %s", len(items), self.selector, rv)
        return rv

    def _events(self, resource_version: str) -> Iterator[dict[str, Any]]:
        return self.kube.watch_sandboxes(self.selector, resource_version, self.timeout_seconds)

    def _apply(self, event: dict[str, Any]) -> str | None:
        return apply_event(event, self.supervisor)


class PoolWatch(ResumingWatch):
    """Every VMSandboxPool, kept in the pool keeper: a change wakes it, so a new or scaled pool is
    acted on at once rather than at its next periodic pass, and its passes list nothing."""

    def __init__(
        self, kube: Kube, keeper: PoolObserver, metrics: AgentMetrics, *, timeout_seconds: int
    ) -> None:
        super().__init__(name="pool-watch", timeout_seconds=timeout_seconds, on_restart=_restarts(metrics))
        self.kube = kube
        self.keeper = keeper

    def _list(self) -> str:
        items, rv = self.kube.list_pools()
        self.keeper.resync(items)
        self.synced.set()
        return rv

    def _events(self, resource_version: str) -> Iterator[dict[str, Any]]:
        return self.kube.watch_pools(resource_version, self.timeout_seconds)

    def _apply(self, event: dict[str, Any]) -> str | None:
        return apply_event(event, self.keeper)
