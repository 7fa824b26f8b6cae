"""The operator's view of the cluster, fed by kopf's watch events and by fresh LISTs.

The operator also stores every object its own writes return, so its next decision does not
wait for the watch to echo them. resourceVersions are never ordered (the API contract makes
them opaque): a :class:`~vmsandbox.kube.expectations.VersionGate` per kind tells a stale watch
event (one before the version the operator wrote or read) or a stale list item (an object the
watch delivered while the list was on its way) from a current one, so neither can move an
object back in time. A watch event held back for a version the watch then never delivers (kopf's
watch re-lists past it) is not lost: it is applied once that wait lapses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from vmsandbox.api import InvalidSandbox, VMSandbox, VMSandboxStatus
from vmsandbox.api.constants import NODE_LABEL
from vmsandbox.api.pool import InvalidPool, VMSandboxPool, parse_pool
from vmsandbox.kube.expectations import VersionGate
from vmsandbox.operator.admission import admit
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.nodes import NodeView, lease_marker, lease_node, node_view
from vmsandbox.operator.scheduling import NOTHING, Demand, ReservationLedger, UsageIndex, demand_of

#: Where a copy of an object comes from: kopf's watch, the operator's own write or fresh read,
#: or a list begun with :meth:`ClusterCache.begin_list`.
Source = Literal["watch", "own", "list"]
Kind = Literal["sandbox", "pool", "node", "lease"]
KINDS: tuple[Kind, ...] = ("sandbox", "pool", "node", "lease")


def _version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def sandbox_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


@dataclass
class SandboxEntry:
    raw: dict[str, Any]
    sandbox: VMSandbox | None
    invalid: InvalidSandbox | None
    first_seen: float  # monotonic

    @property
    def uid(self) -> str:
        return str(self.raw["metadata"].get("uid", ""))

    @property
    def version(self) -> str:
        return _version(self.raw)

    @property
    def node(self) -> str | None:
        return (self.raw["metadata"].get("labels") or {}).get(NODE_LABEL) or None

    @property
    def status(self) -> VMSandboxStatus:
        return self.sandbox.status if self.sandbox is not None else VMSandboxStatus()

    @property
    def finished(self) -> bool:
        phase = self.status.phase
        return phase is not None and phase.finished

    @property
    def demand(self) -> Demand:
        return demand_of(self.sandbox) if self.sandbox is not None else NOTHING


def parse_entry(raw: dict[str, Any], config: OperatorConfig, first_seen: float) -> SandboxEntry:
    try:
        sandbox = admit(raw, config)
        invalid = None
    except InvalidSandbox as exc:
        sandbox, invalid = None, exc
    if sandbox is not None:
        try:
            sandbox.status = VMSandboxStatus.model_validate(raw.get("status") or {})
        except ValidationError:
            sandbox.status = VMSandboxStatus()
    return SandboxEntry(raw=raw, sandbox=sandbox, invalid=invalid, first_seen=first_seen)


class ClusterCache:
    def __init__(self, config: OperatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.sandboxes: dict[str, SandboxEntry] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.leases: dict[str, dict[str, Any]] = {}  # by node name
        #: node -> (lease marker, when this operator saw that marker first), on the operator's clock
        self.lease_seen: dict[str, tuple[str, datetime]] = {}
        self._views: dict[str, NodeView] | None = None
        self._gone_uids: set[str] = set()
        self.pools: dict[str, VMSandboxPool] = {}  # by namespace/name
        self._usage = UsageIndex()
        self._gates: dict[str, VersionGate] = {kind: VersionGate(clock=clock) for kind in KINDS}
        #: (kind, key) -> the newest watch event a gate held back, until the watch delivers the
        #: version it waits for or that expectation lapses (see :meth:`lapsed_events`)
        self._held: dict[tuple[Kind, str], dict[str, Any]] = {}

    def begin_list(self, *kinds: str) -> None:
        """A fresh list of ``kinds`` (sandbox, pool, node, lease) begins: watch events from now
        on mark their objects, whose listed copies are then older than the cache's."""
        for kind in kinds:
            self._gates[kind].begin_list()

    def end_list(self, *kinds: str) -> None:
        for kind in kinds:
            self._gates[kind].end_list()

    def _admit(self, kind: Kind, key: str, raw: dict[str, Any], source: Source, same_object: bool) -> bool:
        """Whether ``raw`` may replace the cache's copy of ``key`` (another object under the same
        name, after a delete and create, always may). A watch event held back is kept, newest
        only: the version it waits for may never come (a watch that re-lists skips versions)."""
        gate = self._gates[kind]
        if not same_object:
            gate.forget(key)
        version = _version(raw)
        if source == "watch":
            admitted = gate.watched(key, version)
        elif source == "list":
            admitted = gate.listed(key, version)
        else:
            gate.own(key, version)
            admitted = True
        if admitted:  # a copy at least as new as every event held before it
            self._held.pop((kind, key), None)
        elif source == "watch":
            self._held[(kind, key)] = raw
        return admitted

    def lapsed_events(self) -> list[tuple[Kind, dict[str, Any]]]:
        """The held-back watch events whose awaited version has lapsed, taken out of the cache's
        keeping: each is the newest the watch delivered of its object, to be applied again as
        a watch event (its gate now admits it). Without this, an object whose last event was
        held back would stay at the listed copy until it changed again."""
        lapsed = [(kind, key) for kind, key in self._held if not self._gates[kind].holding(key)]
        return [(kind, self._held.pop((kind, key))) for kind, key in lapsed]

    def _forget(self, kind: Kind, key: str) -> None:
        self._gates[kind].forget(key)
        self._held.pop((kind, key), None)

    def _replaces(
        self, kind: Kind, old: Mapping[str, Any] | None, key: str, raw: dict[str, Any], source: Source
    ) -> bool:
        """Whether ``raw`` takes the place of ``old``, the cached copy of a Node or Lease: the
        kind's version gate admits it and it is not the very version already held."""
        same = old is not None and _uid(old) == _uid(raw)
        admitted = self._admit(kind, key, raw, source, same)
        return admitted and not (old is not None and _version(old) == _version(raw))

    # sandboxes
    def upsert_sandbox(self, raw: dict[str, Any], source: Source = "watch") -> SandboxEntry | None:
        """Store ``raw`` unless it is older than the stored copy; returns the stored entry."""
        key = sandbox_key(raw)
        uid = str(raw["metadata"].get("uid", ""))
        if uid in self._gone_uids:
            return None
        old = self.sandboxes.get(key)
        same = old is not None and old.uid == uid
        if not self._admit("sandbox", key, raw, source, same) or (
            old is not None and same and old.version == _version(raw)
        ):
            return old if same else None
        first_seen = old.first_seen if old is not None and old.uid == uid else time.monotonic()
        entry = parse_entry(raw, self.config, first_seen)
        if old is not None:
            self._usage.remove(old.uid)
        self.sandboxes[key] = entry
        if entry.sandbox is not None:
            self._usage.put(entry.uid, entry.node, entry.demand, entry.finished)
        return entry

    def forget_sandbox(self, raw: Mapping[str, Any]) -> SandboxEntry | None:
        key = sandbox_key(raw)
        uid = str((raw.get("metadata") or {}).get("uid", ""))
        if uid:
            self._gone_uids.add(uid)
        old = self.sandboxes.get(key)
        if old is not None and (not uid or old.uid == uid):
            self._usage.remove(old.uid)
            self._forget("sandbox", key)
            return self.sandboxes.pop(key)
        return None

    def usage(self, ledger: ReservationLedger, *, without: str | None = None) -> dict[str, Demand]:
        """``usage_by_node(self.placements(), ledger)`` (``without``: that uid's entry left out),
        from an index kept as entries change instead of a pass over every sandbox."""
        return self._usage.usage(ledger, without=without)

    def placements(self) -> Iterator[tuple[str, str | None, Demand, bool]]:
        for entry in self.sandboxes.values():
            if entry.sandbox is not None:
                yield entry.uid, entry.node, entry.demand, entry.finished

    # pools
    def upsert_pool(self, raw: dict[str, Any], source: Source = "watch") -> VMSandboxPool | None:
        """Store a pool unless it is older than the stored copy; None when it does not parse."""
        key = sandbox_key(raw)
        old = self.pools.get(key)
        same = old is not None and old.metadata.uid == raw["metadata"].get("uid")
        if not self._admit("pool", key, raw, source, same):
            return old if same else None
        if old is not None and same and old.metadata.resource_version == _version(raw):
            return old
        try:
            pool = parse_pool(raw)
        except InvalidPool:
            self.pools.pop(key, None)
            return None
        self.pools[key] = pool
        return pool

    def forget_pool(self, raw: Mapping[str, Any]) -> None:
        old = self.pools.get(sandbox_key(raw))
        if old is not None and old.metadata.uid == (raw.get("metadata") or {}).get("uid"):
            self.pools.pop(sandbox_key(raw))
            self._forget("pool", sandbox_key(raw))

    # nodes and agent leases
    def upsert_node(self, raw: dict[str, Any], source: Source = "watch") -> bool:
        """Returns True when something scheduling depends on changed (not just a heartbeat)."""
        name = str(raw["metadata"]["name"])
        old = self.nodes.get(name)
        if not self._replaces("node", old, name, raw, source):
            return False
        self.nodes[name] = raw
        self._views = None
        return old is None or _schedulable_bits(old) != _schedulable_bits(raw)

    def forget_node(self, raw: Mapping[str, Any]) -> None:
        name = str((raw.get("metadata") or {}).get("name"))
        self.nodes.pop(name, None)
        self._forget("node", name)
        self._views = None

    def upsert_lease(self, raw: dict[str, Any], source: Source = "watch") -> str | None:
        """Stores an agent Lease; returns its node name (None for Leases that are not agents')."""
        meta = raw.get("metadata") or {}
        node = lease_node(raw)
        if node is None or meta.get("namespace") != self.config.namespace:
            return None
        if not self._replaces("lease", self.leases.get(node), node, raw, source):
            return node
        self.leases[node] = raw
        marker = lease_marker(raw)
        seen = self.lease_seen.get(node)
        if seen is None or seen[0] != marker:
            self.lease_seen[node] = (marker, datetime.now(UTC))
        self._views = None
        return node

    def restart_lease_clocks(self) -> None:
        """Count every agent's silence from now, as a new leader does (a gap in what this
        replica saw, e.g. while it was not leading or the API server was away, is no silence
        of the agents)."""
        now = datetime.now(UTC)
        self.lease_seen = {node: (marker, now) for node, (marker, _) in self.lease_seen.items()}
        self._views = None

    def forget_lease(self, raw: Mapping[str, Any]) -> None:
        node = lease_node(raw)
        if node is not None and (raw.get("metadata") or {}).get("namespace") == self.config.namespace:
            self.leases.pop(node, None)
            self.lease_seen.pop(node, None)
            self._forget("lease", node)
            self._views = None

    def renewed(self, node: str) -> datetime | None:
        seen = self.lease_seen.get(node)
        return seen[1] if seen is not None else None

    def node_views(self) -> dict[str, NodeView]:
        if self._views is None:
            self._views = {name: node_view(raw, self.renewed(name)) for name, raw in self.nodes.items()}
        return self._views

    def lease_age(self, node: str, now: datetime) -> float | None:
        renewed = self.renewed(node)
        return None if renewed is None else (now - renewed).total_seconds()

    def unreachable_nodes(self, now: datetime, silent: float, window: float) -> tuple[set[str], set[str]]:
        """(nodes whose agent is silent past ``silent`` seconds, nodes considered) for the brake.

        Considered are the nodes with an agent Lease heard from within ``window``: a node lost
        long ago was dealt with then and says nothing about what is failing now.
        """
        considered, unreachable = set(), set()
        for name in self.nodes:
            age = self.lease_age(name, now)
            if age is None or age > window:
                continue
            considered.add(name)
            if age > silent:
                unreachable.add(name)
        return unreachable, considered


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _schedulable_bits(node: Mapping[str, Any]) -> tuple[Any, ...]:
    meta = node.get("metadata") or {}
    return (meta.get("labels"), meta.get("annotations"), (node.get("spec") or {}).get("taints"))
