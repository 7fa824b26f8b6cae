"""The agent's registration: a Lease renewed every few seconds, and its Node's label and annotations.

The operator schedules onto nodes labelled ``vmsandbox.io/agent=ready`` whose Lease is fresh,
reading capacity from the ``vmsandbox.io/capacity`` annotation. A stopping agent sets the label
to ``stopping`` (:meth:`Heartbeat.withdraw`), so nothing is placed on its node while no agent
runs there; the next agent's first round sets it back to ``ready``. The Node itself is the
kubelet's; the agent only merges its own keys into it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import KW_ONLY, dataclass, field

from vmsandbox.api.constants import (
    AGENT_ENDPOINT_ANNOTATION,
    AGENT_LEASE_PREFIX,
    AGENT_READY_LABEL,
    CAPACITY_ANNOTATION,
)
from vmsandbox.api.node import NodeCapacity
from vmsandbox.kube import ApiError
from vmsandbox.kube.leases import lease_body, lease_spec, micro_time
from vmsandbox.node_agent.kube import Kube

log = logging.getLogger("vmsandbox.node_agent.heartbeat")

#: The ready label's value while the agent takes sandboxes (the operator schedules only then).
READY = "ready"
#: The ready label's value while no agent serves the node.
STOPPING = "stopping"


@dataclass(eq=False, repr=False)
class Heartbeat:
    kube: Kube
    _: KW_ONLY
    node: str
    namespace: str
    capacity: NodeCapacity
    endpoint: str
    duration_seconds: int
    renew_seconds: float
    lease_name: str = field(init=False)
    #: When the last successful renewal was *sent* (monotonic): the server and whoever
    #: watches the Lease saw it at that moment or later, never earlier.
    last_renewed: float | None = field(init=False, default=None)
    started: float = field(init=False, default_factory=time.monotonic)
    node_registered: bool = field(init=False, default=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.lease_name = AGENT_LEASE_PREFIX + self.node
        self.thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def withdraw(self, timeout: float = 3.0) -> None:
        """Stop renewing and mark the node unschedulable (``vmsandbox.io/agent=stopping``).

        Waits for a round in progress first, so it cannot set the label back to ``ready``. The
        Lease is left to expire: the sandboxes' VMs keep running, for the next agent to adopt."""
        self.stop()
        if self.thread.is_alive():
            self.thread.join(timeout)
        try:
            labels = {AGENT_READY_LABEL: STOPPING}
            self.kube.patch_node(self.node, {"metadata": {"labels": labels}}, timeout=timeout)
        except Exception as exc:
            log.warning("could not mark node %s unschedulable: %s", self.node, exc)
            return
        log.info("node %s marked %s=%s", self.node, AGENT_READY_LABEL, STOPPING)

    def fresh(self) -> bool:
        return self.last_renewed is not None and time.monotonic() - self.last_renewed < self.duration_seconds

    def silence(self) -> float:
        """Seconds since a renewal last went through (since start-up when none has yet)."""
        return time.monotonic() - (self.last_renewed if self.last_renewed is not None else self.started)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = time.monotonic()
                self.renew_lease()
                self.last_renewed = sent
            except Exception as exc:
                log.warning("renewing lease %s/%s failed: %s", self.namespace, self.lease_name, exc)
            try:
                self.register_node()
                self.node_registered = True
            except Exception as exc:
                log.warning("updating node %s failed: %s", self.node, exc)
            self._stop.wait(self.renew_seconds)

    def renew_lease(self) -> None:
        lease = self.kube.get_lease(self.namespace, self.lease_name)
        spec = lease_spec(self.node, self.duration_seconds, micro_time(), (lease or {}).get("spec"))
        if lease is None:
            self.kube.create_lease(self.namespace, lease_body(self.namespace, self.lease_name, spec))
            log.info("created lease %s/%s", self.namespace, self.lease_name)
            return
        try:
            self.kube.replace_lease(self.namespace, self.lease_name, {**lease, "spec": spec})
        except ApiError as exc:
            if not exc.conflict:
                raise
            # Someone wrote in between; the next round reads again.

    def register_node(self) -> None:
        self.kube.patch_node(
            self.node,
            {
                "metadata": {
                    "labels": {AGENT_READY_LABEL: READY},
                    "annotations": {
                        CAPACITY_ANNOTATION: json.dumps(self.capacity.to_wire(), sort_keys=True),
                        AGENT_ENDPOINT_ANNOTATION: self.endpoint,
                    },
                }
            },
        )
