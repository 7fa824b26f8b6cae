"""Puts the agent together: config, clients, image store, runtimes, supervisor, watch, heartbeat, HTTP."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

from vmsandbox.api.status import Phase
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.node_agent.access import LogAccess
from vmsandbox.node_agent.admission import LocalAdmission
from vmsandbox.node_agent.capacity import hypervisor_refusals, node_capacity
from vmsandbox.node_agent.config import AgentConfig, ConfigError
from vmsandbox.node_agent.context import AgentContext
from vmsandbox.node_agent.events import EventRecorder
from vmsandbox.node_agent.fencing import Fence
from vmsandbox.node_agent.forwardroute import ForwardTarget, PortForwardRoute
from vmsandbox.node_agent.heartbeat import Heartbeat
from vmsandbox.node_agent.httpserver import AgentHTTPServer, LogSource
from vmsandbox.node_agent.images import ImageStore
from vmsandbox.node_agent.kube import Kube, make_client
from vmsandbox.node_agent.members import MemberStore
from vmsandbox.node_agent.metrics import AgentMetrics
from vmsandbox.node_agent.network import NetworkError
from vmsandbox.node_agent.network.metrics import NetworkCollector
from vmsandbox.node_agent.network.startup import start_network
from vmsandbox.node_agent.poolkeeper import PoolKeeper
from vmsandbox.node_agent.poolmetrics import PoolMetrics
from vmsandbox.node_agent.records import RecordStore
from vmsandbox.node_agent.runtimes import Runtimes
from vmsandbox.node_agent.statuswriter import SandboxWriter
from vmsandbox.node_agent.streamroutes import SandboxUnavailable, StreamRoutes, Target
from vmsandbox.node_agent.supervisor import Supervisor
from vmsandbox.node_agent.watch import PoolWatch, SandboxWatch

#: How often interrupted creates are looked for after start-up.
SWEEP_SECONDS = 300.0

log = logging.getLogger("vmsandbox.node_agent")

REQUIRED_TOOLS = ("skopeo", "umoci", "cp")
FINISHED_PHASES = (Phase.SUCCEEDED.value, Phase.FAILED.value)


def hypervisor_config(config: AgentConfig) -> HypervisorConfig:
    """The drivers' settings from ``VMSANDBOX_*``, with the agent's guest image dir when it sets one
    and its VM cgroup settings."""
    hv = HypervisorConfig.load()
    if config.guest_image_dir is not None:
        hv = hv.model_copy(update={"guest_image_dir": config.guest_image_dir})
    update: dict[str, object] = {
        "vmm_overhead_mib": config.vmm_overhead_mib,
        "cgroup_parent": config.vmm_cgroup_parent,
    }
    if config.vmm_user is not None:
        update["vmm_user"] = config.vmm_user
    return hv.model_copy(update=update)


def advertise_address(config: AgentConfig) -> str:
    if config.advertise_address:
        return config.advertise_address
    if os.environ.get("POD_IP"):
        return os.environ["POD_IP"]
    if config.listen_address not in ("0.0.0.0", "::", ""):
        return config.listen_address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _prepare_dir(path: Path, option: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot create {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: {path} is not writable")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
        if missing:
            raise ConfigError(f"required tools not found on PATH: {', '.join(missing)}")
        _prepare_dir(config.state_dir, "stateDir")
        _prepare_dir(config.runtime_root, "runtimeRoot")
        self.hv_config = hypervisor_config(config)
        self.refusals = hypervisor_refusals(config, self.hv_config)
        self.capacity = node_capacity(config, self.hv_config)
        if config.default_hypervisor not in self.capacity.hypervisors:
            why = self.refusals.get(config.default_hypervisor, "")
            raise ConfigError(
                f"defaultHypervisor: {config.default_hypervisor!r} is not usable on this node"
                f"{f': {why}' if why else ''} (usable: {', '.join(self.capacity.hypervisors) or 'none'})"
            )
        self.metrics = AgentMetrics()
        self.kube = Kube(make_client(config.kubeconfig))
        self.records = RecordStore(config.state_dir / "sandboxes")
        self.supervisor: Supervisor | None = None
        self.images = ImageStore(
            config.state_dir / "images",
            limit_bytes=config.image_cache_limit_mib * 1024 * 1024,
            insecure=config.registry_insecure,
            allowed_layout_dirs=config.allowed_layout_dirs,
            in_use=lambda: self.supervisor.in_use_digests() if self.supervisor else set(),
        )
        self.runtimes = Runtimes(
            config.runtime_root, self.hv_config, list(config.allowed_hypervisors), config.log_limits()
        )
        self.events = EventRecorder(self.kube, config.node_name)
        try:
            network = start_network(config, (r.uid for r in self.records.load_all()))
        except NetworkError as exc:
            raise ConfigError(f"sandboxCIDR: cannot set up the sandbox network: {exc}") from None
        if network is not None:
            self.metrics.registry.register(NetworkCollector(network, self._sandbox_name))
        ctx = AgentContext(
            config=config,
            writer=SandboxWriter(self.kube, self.metrics),
            events=self.events,
            images=self.images,
            runtimes=self.runtimes,
            records=self.records,
            metrics=self.metrics,
            start_slots=threading.BoundedSemaphore(config.max_concurrent_starts),
            writes=ThreadPoolExecutor(max_workers=8, thread_name_prefix="status"),
            usable_hypervisors=self.capacity.hypervisors,
            network=network,
            hypervisor_refusals=self.refusals,
            admission=LocalAdmission(self.capacity, config.node_name),
            fence=Fence(
                lambda: self.heartbeat.silence(), config.node_lost_grace_seconds, config.lease_renew_seconds
            ),
        )
        self.pools = PoolKeeper(
            kube=self.kube,
            runtimes=self.runtimes,
            admission=ctx.admission,
            store=MemberStore(config.state_dir / "pool-members"),
            metrics=PoolMetrics(self.metrics.registry, self._claimed),
            node=config.node_name,
            default_hypervisor=config.default_hypervisor,
            usable_hypervisors=self.capacity.hypervisors,
            has_network=network is not None,
            sync_seconds=config.pool_sync_seconds,
        )
        ctx.pools = self.pools
        self.supervisor = Supervisor(ctx)
        self.metrics.track_phases(self.supervisor.phase_counts)
        self.watch = SandboxWatch(
            self.kube,
            self.supervisor,
            self.metrics,
            node=config.node_name,
            timeout_seconds=config.watch_timeout_seconds,
        )
        self.pool_watch = PoolWatch(
            self.kube, self.pools, self.metrics, timeout_seconds=config.watch_timeout_seconds
        )
        access = LogAccess(self.kube.client)
        self.http = AgentHTTPServer(
            config.listen_address,
            config.port,
            healthy=self._healthy,
            ready=self._ready,
            registry=self.metrics.registry,
            log_file=self._log_file,
            access=access,
            streams=StreamRoutes(self._stream_target, access.check_subresource),
            portforward=PortForwardRoute(self._forward_target, access.check_subresource),
        )
        self.heartbeat = Heartbeat(
            self.kube,
            node=config.node_name,
            namespace=config.namespace,
            capacity=self.capacity,
            endpoint=f"http://{advertise_address(config)}:{self.http.port}",
            duration_seconds=config.lease_duration_seconds,
            renew_seconds=config.lease_renew_seconds,
        )
        self._stop = threading.Event()
        self.network = network

    def _healthy(self) -> tuple[bool, str]:
        dead = [t.name for t in (self.watch.thread, self.heartbeat.thread) if not t.is_alive()]
        return (not dead, f"threads not running: {', '.join(dead)}" if dead else "ok")

    def _ready(self) -> tuple[bool, str]:
        if not self.watch.synced.is_set():
            return False, "sandboxes not listed yet"
        if not self.heartbeat.fresh():
            return False, "lease not renewed"
        return True, "ok"

    def _claimed(self) -> dict[str, int]:
        """Sandboxes of this node running in a VM claimed from each pool."""
        supervisor = self.supervisor
        uids = supervisor.uids() if supervisor is not None else set()
        counts: dict[str, int] = {}
        for record in self.records.load_all():
            if record.pool and record.uid in uids and record.container_created:
                counts[record.pool] = counts.get(record.pool, 0) + 1
        return counts

    def _sandbox_name(self, uid: str) -> tuple[str, str] | None:
        record = self.records.load(uid)
        return (record.namespace, record.name) if record is not None else None

    def _log_file(self, namespace: str, name: str) -> LogSource | None:
        supervisor = self.supervisor
        assert supervisor is not None
        worker = supervisor.worker_for(namespace, name)
        if worker is not None:

            def running() -> bool:
                current = supervisor.worker_for(namespace, name)
                return current is not None and current.phase not in FINISHED_PHASES

            return LogSource(self.records.log_path(worker.uid), running)
        for record in self.records.load_all():
            if (record.namespace, record.name) == (namespace, name):
                return LogSource(self.records.log_path(record.uid), lambda: False)
        return None

    def _sweep_periodically(self) -> None:
        """Creates of this agent are never swept (their creator lives); this catches those of
        runtime CLI calls killed on this node while the agent ran."""
        while not self._stop.wait(SWEEP_SECONDS):
            self.runtimes.sweep()

    def _stream_target(self, namespace: str, name: str) -> Target:
        """The running workload of ``namespace/name`` on this node, for exec and file transfers."""
        supervisor = self.supervisor
        assert supervisor is not None
        worker = supervisor.worker_for(namespace, name)
        if worker is None or worker.record is None or worker.record.hypervisor is None:
            raise SandboxUnavailable(
                404, f"no sandbox {namespace}/{name} runs on node {self.config.node_name}"
            )
        if worker.phase != Phase.RUNNING.value:
            raise SandboxUnavailable(
                409, f"sandbox {namespace}/{name} is {worker.phase or 'Pending'}, not Running"
            )
        runtime = self.runtimes.for_hypervisor(worker.record.hypervisor)
        return Target(runtime.agent_for(worker.cid), worker.cid)

    def _forward_target(self, namespace: str, name: str) -> ForwardTarget:
        """The address of ``namespace/name``'s running sandbox, for port-forwarding: its lease, never
        an address the caller names."""
        self._stream_target(namespace, name)  # 404 / 409 as for exec
        supervisor = self.supervisor
        assert supervisor is not None
        worker = supervisor.worker_for(namespace, name)
        if self.network is None:
            why = f"node {self.config.node_name} gives sandboxes no network (no sandboxCIDR)"
            raise SandboxUnavailable(409, f"{why}: nothing to forward to")
        lease = self.network.lease(worker.uid) if worker is not None else None
        if lease is None or not lease.ip:
            why = f"sandbox {namespace}/{name} has no network (spec.network.mode is none)"
            raise SandboxUnavailable(409, f"{why}: nothing to forward to")
        return ForwardTarget(lease.ip, self.network.settings.netns)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; VMs keep running, to be adopted by the next agent."""

        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("received signal %d; stopping (VMs keep running)", signum)
            self._stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.runtimes.sweep()  # before any worker: what a killed predecessor left mid-create
        threading.Thread(target=self._sweep_periodically, name="sweep", daemon=True).start()
        self.pools.start()  # after the sweep: members a killed predecessor was booting are gone
        self.pool_watch.start()
        self.http.start()
        self.heartbeat.start()
        self.watch.start()
        log.info(
            "agent started on node %s: HTTP port %d, hypervisors %s (default %s)",
            self.config.node_name,
            self.http.port,
            ",".join(self.capacity.hypervisors),
            self.config.default_hypervisor,
        )
        self._stop.wait()
        self.heartbeat.withdraw()  # first: nothing new is placed here while the agent is away
        self.watch.stop()
        self.pool_watch.stop()
        self.pools.stop()
        self.events.flush()
        self.http.stop()
