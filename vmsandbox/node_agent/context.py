"""What every sandbox worker of one agent shares."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vmsandbox.node_agent.admission import LocalAdmission
from vmsandbox.node_agent.config import AgentConfig
from vmsandbox.node_agent.events import EventRecorder
from vmsandbox.node_agent.fencing import Fence
from vmsandbox.node_agent.images import ImageStore
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.network import NodeNetwork
from vmsandbox.node_agent.poolkeeper import PoolKeeper
from vmsandbox.node_agent.records import RecordStore
from vmsandbox.node_agent.runtimes import Runtimes
from vmsandbox.node_agent.statuswriter import SandboxWriter


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
