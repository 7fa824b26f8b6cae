"""The OCI lifecycle (create, start, state, kill, delete) of containers that live in microVMs.

``create`` follows kata-runtime's order: validate the id and bundle, parse config.json, decide
the pod role from CRI annotations, boot a VM for a pod sandbox (or join the sandbox's VM for a
pod container), create the container through the guest agent, start the host relay whose pid
stands for the container, and write the pid file last. Unlike kata, any failure after the id is
reserved tears down everything create built (VM, relay, guest container, disk, state directory),
as the runtime specification requires.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import os
import signal as signals
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsandbox.guest.protocol import (
    WRONG_STATUS,
    BlockDevice,
    ContainerInfo,
    CreateContainer,
    DestroyContainer,
    Exited,
    GetState,
    HostPath,
    Ok,
    SignalContainer,
    StartContainer,
    WaitExit,
)
from vmsandbox.hypervisor import driver_for
from vmsandbox.hypervisor.base import (
    CGROUP_ENDPOINT,
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    SnapshotManifest,
    VMHandle,
    VMSpec,
)
from vmsandbox.hypervisor.cgroups import Limits, VMCgroup, remove_unowned
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.hypervisor.procs import kill_mentioning, running, signal_recorded, start_time
from vmsandbox.runtime import console
from vmsandbox.runtime.client import AgentClient
from vmsandbox.runtime.diskcache import DiskCache, disk_serial
from vmsandbox.runtime.errors import AgentError, InvalidConfig, NotFound, RuntimeError_, WrongState
from vmsandbox.runtime.faults import checkpoint
from vmsandbox.runtime.ids import validate_id
from vmsandbox.runtime.logfiles import LogLimits
from vmsandbox.runtime.members import (
    MEMBER_ANNOTATION,
    member_record,
    personalize,
    plug_network,
    take_member,
)
from vmsandbox.runtime.pidfile import write_pid_file
from vmsandbox.runtime.podtype import pod_role
from vmsandbox.runtime.relay import EXIT_FILE, RELAY_LOG, PendingRelay, RelayConfig, read_exit
from vmsandbox.runtime.snapshots import ANNOTATION_RESTORE_FROM, snapshot_dir
from vmsandbox.runtime.spec import load_spec, resolve_bundle
from vmsandbox.runtime.state import DISKS_DIR, ContainerState, Record, StateStore, Timings
from vmsandbox.runtime.vmsize import VMSize, vm_size

log = logging.getLogger("vmsandbox.runtime")

DEFAULT_ROOT = Path("/run/vmsandbox")
Stdio = tuple[int, int, int]


class CreateOptions(BaseModel):
    """How the caller wants to see the container: pid file, console, stdio, output log."""

    model_config = ConfigDict(frozen=True)

    pid_file: Path | None = None
    console_socket: Path | None = None
    #: An existing pty slave to use as the terminal (``--console``), instead of a socket.
    console_path: Path | None = None
    #: stdin, stdout, stderr for the relay; None means /dev/null (output still goes to the log).
    stdio: Stdio | None = None
    log_path: Path | None = None
    #: The pod sandbox's network interface, prepared by the caller (the node agent).
    network: NetworkAttachment | None = None
    #: The manifest digest of the image the bundle's rootfs was unpacked from, when the caller
    #: knows it (the node agent). It keys the shared root disk instead of the tree's metadata,
    #: and says the rootfs is the image's tree shared with other containers: on the process
    #: backend the container then writes to an overlay over it, never to the tree itself.
    image_digest: str | None = None


def parse_signal(value: str | int) -> int:
    """``TERM``, ``SIGTERM``, ``15`` or ``15`` as an int, as runc's ``kill`` accepts them."""
    if isinstance(value, int) or value.isdigit():
        number = int(value)
        if 1 <= number <= 64:
            return number
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        member = getattr(signals.Signals, name, None) if name.isidentifier() else None
        if member is not None:
            return int(member)
    raise RuntimeError_(f"unknown signal {value!r}", step="signal")


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 3)


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


class Runtime:
    """The library behind ``vmsandbox-runtime``; the node agent uses it directly."""

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        hypervisor: str = "process",
        config: HypervisorConfig | None = None,
        log_limits: LogLimits | None = None,
    ) -> None:
        self.root = Path(root)
        self.log_limits = log_limits or LogLimits()
        self.hypervisor = hypervisor
        self.config = config or HypervisorConfig.load()
        self.store = StateStore(self.root)
        self.disks = DiskCache(self.root / DISKS_DIR, in_use=self._disks_in_use)
        self._drivers: dict[str, HypervisorDriver] = {}

    def driver(self, name: str | None = None) -> HypervisorDriver:
        name = name or self.hypervisor
        if name not in self._drivers:
            self._drivers[name] = driver_for(name, self.config)
        return self._drivers[name]

    def _client(self, record: Record) -> AgentClient:
        if record.state.vm is None:
            raise AgentError(f"container {record.state.id!r} has no VM", step="guest agent")
        return AgentClient(self.driver(record.state.hypervisor), record.state.vm)

    # ---- create ----------------------------------------------------------------------

    def create(
        self,
        container_id: str,
        bundle: Path | str | None,
        *,
        pid_file: Path | None = None,
        console_socket: Path | None = None,
        stdio: Stdio | None = None,
        log_path: Path | None = None,
        console_path: Path | None = None,
        network: NetworkAttachment | None = None,
        image_digest: str | None = None,
    ) -> ContainerState:
        validate_id(container_id)
        options = CreateOptions(
            pid_file=pid_file,
            console_socket=console_socket,
            console_path=console_path,
            stdio=stdio,
            log_path=log_path,
            network=network,
            image_digest=image_digest,
        )
        record_dir = self.store.reserve(container_id)
        undo = contextlib.ExitStack()
        undo.callback(self.store.remove, container_id)
        # Descriptors the relay inherits; the creating process closes its copies either way.
        with contextlib.ExitStack() as fds:
            try:
                state = self._create(container_id, bundle, record_dir, options, undo, fds)
            except BaseException as exc:
                log.info("create %s failed (%s); rolling back", container_id, exc)
                undo.close()
                raise
        undo.pop_all()
        return state

    def _create(
        self,
        container_id: str,
        bundle: Path | str | None,
        record_dir: Path,
        options: CreateOptions,
        undo: contextlib.ExitStack,
        fds: contextlib.ExitStack,
    ) -> ContainerState:
        """The create steps; everything they build is registered on ``undo``."""
        t_start = time.monotonic()
        checkpoint("reserve")
        bundle_path = resolve_bundle(bundle)
        checkpoint("bundle")
        loaded = load_spec(bundle_path)
        checkpoint("config")
        annotations = loaded.spec.annotations or {}
        role = pod_role(container_id, annotations)
        size = vm_size(annotations) if role.kind == "sandbox" else None
        restore_source = self._restore_source(annotations) if role.kind == "sandbox" else None
        checkpoint("container-type")
        terminal = loaded.spec.process.terminal
        if terminal and options.console_socket is None and options.console_path is None:
            raise console.ConsoleError("process.terminal is true: --console-socket is required")
        if not terminal and options.console_socket is not None:
            raise console.ConsoleError("--console-socket was given but process.terminal is false")

        sandbox: Record | None = None
        if role.kind == "container":
            sandbox = self._sandbox_for(role.sandbox_id)
        hypervisor = sandbox.state.hypervisor if sandbox else self.hypervisor
        driver = self.driver(hypervisor)
        log_file = options.log_path or record_dir / "container.log"
        state = ContainerState(
            id=container_id,
            status="creating",
            bundle=str(bundle_path),
            annotations=annotations,
            hypervisor=hypervisor,
            log_path=str(log_file),
        )
        record = Record(state=state, kind=role.kind, sandbox_id=role.sandbox_id, owns_vm=sandbox is None)
        self.store.save(record)
        # Launched now, so that a new interpreter's start overlaps the boot and the guest's create.
        relay = PendingRelay(hypervisor, self.config, self.store.vms_dir, record_dir / RELAY_LOG)
        undo.callback(relay.abandon)

        rootfs: HostPath | BlockDevice
        disk: DiskSpec | None = None
        if driver.shares_host_fs:
            rootfs = HostPath(path=str(loaded.rootfs), overlay=options.image_digest is not None)
        else:
            image = self.disks.get(loaded.rootfs, options.image_digest)
            disk = DiskSpec(path=image, serial=disk_serial(container_id), readonly=True)
            rootfs = BlockDevice(serial=disk.serial, overlay=True)
            record.disk_image = str(image)
            self.store.save(record)
        checkpoint("disk")

        member_id = annotations.get(MEMBER_ANNOTATION) if sandbox is None else None
        if member_id is not None:
            handle = self._take(driver, member_id, record, disk, undo)
            plug_network(driver, handle, options.network, undo)
            personalize(driver, handle, container_id, loaded.spec.hostname, options.network)
            state.timings = Timings(claim=_ms(t_start))
            client = AgentClient(driver, handle)
            checkpoint("claim")
        elif sandbox is None:
            assert size is not None
            if restore_source is None:
                handle = self._boot(driver, container_id, size, disk, undo, options.network)
            else:
                handle = self._restore(driver, container_id, restore_source, undo)
                if disk is not None:  # the snapshot has no container: its disk joins now
                    driver.attach_disk(handle, disk)
                # nor a NIC: each copy gets its sandbox's own, as a claimed member does
                plug_network(driver, handle, options.network, undo)
            state.timings = Timings(
                vmmStart=handle.timings.vmm_start,
                vmBoot=handle.timings.vm_boot,
                agentReady=handle.timings.agent_ready,
                kernelToInit=handle.timings.kernel_to_init,
                initToAgentReady=handle.timings.init_to_agent_ready,
                restore=None if restore_source is None else handle.timings.vm_boot,
            )
            checkpoint("boot")
            client = AgentClient(driver, handle)
            # every copy of a snapshot starts with the same random state and a stale clock
            personalize(
                driver,
                handle,
                container_id,
                loaded.spec.hostname,
                options.network,
                reseed=restore_source is not None,
            )
            checkpoint("create-sandbox")
        else:
            assert sandbox.state.vm is not None
            handle = sandbox.state.vm
            client = AgentClient(driver, handle)
            if disk is not None:
                driver.attach_disk(handle, disk)
                undo.callback(self._detach_quietly, driver, handle, disk.serial)
        state.vm = handle
        self.store.save(record)

        t0 = time.monotonic()
        client.call(
            CreateContainer(
                container_id=container_id, spec=loaded.document, rootfs=rootfs, terminal=terminal
            ),
            ContainerInfo,
        )
        undo.callback(self._destroy_quietly, client, container_id)
        state.timings.containerCreate = _ms(t0)
        checkpoint("create-container")

        if terminal:
            relay_stdio = self._console(options.console_socket, options.console_path, fds)
        else:
            relay_stdio = options.stdio or self._null_stdio(fds)
        checkpoint("console")

        if not log_file.exists():
            undo.callback(log_file.unlink, missing_ok=True)
        log_file.touch()
        relay_pid = relay.attach(
            RelayConfig(
                container_id=container_id,
                handle=handle,
                stdio=relay_stdio,
                terminal=terminal,
                log_path=log_file,
                relay_log=record_dir / RELAY_LOG,
                hypervisor_config=self.config,
                log_limits=self.log_limits,
                exit_path=record_dir / EXIT_FILE,
            ),
        )
        relay_start = start_time(relay_pid)
        undo.callback(_kill_relay, relay_pid, 0.0, relay_start)
        checkpoint("relay")

        state.status = "created"
        state.pid = relay_pid
        record.relay_pid = relay_pid
        record.relay_start = relay_start
        self.store.save(record)
        checkpoint("state")

        if options.pid_file is not None:
            pid_path = Path(os.path.abspath(options.pid_file))
            existed = pid_path.exists()
            write_pid_file(pid_path, relay_pid)
            if not existed:
                undo.callback(pid_path.unlink, missing_ok=True)
        checkpoint("pid-file")
        return state

    def _take(
        self,
        driver: HypervisorDriver,
        member_id: str,
        record: Record,
        disk: DiskSpec | None,
        undo: contextlib.ExitStack,
    ) -> VMHandle:
        """Take pool member ``member_id``'s VM for ``record``: from here on the VM is the new
        container's (recorded before the member's record goes), and a failed create stops it."""
        member = take_member(self.store, driver, member_id)
        handle = member.state.vm
        assert handle is not None
        record.state.vm = handle
        self.store.save(record)
        self.store.remove(member_id)
        undo.callback(_remove_empty, handle.state_dir.parent)
        undo.callback(self.remove_vm_cgroup, member_id, handle)  # after the stop below: LIFO
        undo.callback(driver.stop, handle)
        if disk is not None:
            driver.attach_disk(handle, disk)
        return handle

    def boot_member(self, member_id: str, vcpus: int, memory_mib: int) -> ContainerState:
        """Boot a pool member: a VM of this size with its guest agent ready and no container.

        All or nothing, as create is; the member is idle (status ``created``) once this returns.
        """
        self.store.reserve(member_id)
        undo = contextlib.ExitStack()
        undo.callback(self.store.remove, member_id)
        try:
            driver = self.driver()
            record = member_record(member_id, self.hypervisor)
            record.state.annotations = {"vcpus": str(vcpus), "memoryMiB": str(memory_mib)}
            self.store.save(record)
            handle = self._boot(driver, member_id, VMSize(vcpus=vcpus, memory_mib=memory_mib), None, undo)
            record.state.vm = handle
            record.state.status = "created"
            record.state.timings = Timings(
                vmmStart=handle.timings.vmm_start,
                vmBoot=handle.timings.vm_boot,
                agentReady=handle.timings.agent_ready,
                kernelToInit=handle.timings.kernel_to_init,
                initToAgentReady=handle.timings.init_to_agent_ready,
            )
            self.store.save(record)
        except BaseException:
            undo.close()
            raise
        undo.pop_all()
        return record.state

    def _sandbox_for(self, sandbox_id: str) -> Record:
        try:
            sandbox = self.store.load(sandbox_id)
        except NotFound as exc:
            raise RuntimeError_(f"sandbox {sandbox_id!r} does not exist", step="sandbox") from exc
        if sandbox.kind != "sandbox" or sandbox.state.vm is None:
            raise RuntimeError_(f"{sandbox_id!r} is not a running pod sandbox", step="sandbox")
        if not self.driver(sandbox.state.hypervisor).alive(sandbox.state.vm):
            raise RuntimeError_(f"the VM of sandbox {sandbox_id!r} is not running", step="sandbox")
        return sandbox

    def _boot(
        self,
        driver: HypervisorDriver,
        container_id: str,
        size: VMSize,
        disk: DiskSpec | None,
        undo: contextlib.ExitStack,
        network: NetworkAttachment | None = None,
    ) -> VMHandle:
        vm_id = vm_id_for(container_id)
        spec = VMSpec(
            vm_id=vm_id,
            state_dir=self.store.vm_dir(vm_id),
            vcpus=size.vcpus,
            memory_mib=size.memory_mib,
            disks=[disk] if disk else [],
            network=network,
            kernel_args=network.kernel_args() if network is not None else [],
            hotplug_dirs=[self.store.root],
        )
        if not driver.shares_host_fs:
            images = self.config.guest_image_dir
            spec.kernel = images / "vmlinuz"
            spec.initramfs = images / "initramfs.img"
            spec.root_disk = images / "rootfs.img"
        undo.callback(_remove_empty, spec.state_dir.parent)
        undo.callback(_remove_tree, spec.state_dir)
        spec.cgroup = self._make_cgroup(container_id, size, undo)
        handle = driver.boot(spec)
        undo.callback(driver.stop, handle)
        return handle

    def _restore_source(self, annotations: dict[str, str]) -> Path | None:
        """The snapshot a sandbox is restored from, checked before anything is built."""
        value = annotations.get(ANNOTATION_RESTORE_FROM)
        if value is None:
            return None
        source = snapshot_dir(self.root, value, step=f"config.json: annotations.{ANNOTATION_RESTORE_FROM}")
        if not source.is_dir():
            what = f"snapshot {source} does not exist"
            raise InvalidConfig(what, step=f"config.json: annotations.{ANNOTATION_RESTORE_FROM}")
        return source

    def _restore(
        self,
        driver: HypervisorDriver,
        container_id: str,
        source: Path,
        undo: contextlib.ExitStack,
    ) -> VMHandle:
        """The pod sandbox's VM restored from ``source`` (size and kernel come with it), with no
        NIC: the snapshot's machine had none (the caller plugs the sandbox's in)."""
        vm_id = vm_id_for(container_id)
        spec = VMSpec(vm_id=vm_id, state_dir=self.store.vm_dir(vm_id), hotplug_dirs=[self.store.root])
        undo.callback(_remove_empty, spec.state_dir.parent)
        undo.callback(_remove_tree, spec.state_dir)
        try:  # the VM's cgroup is sized before its VMM starts; the driver judges the snapshot
            manifest = SnapshotManifest.load(source, driver.name)
            size = VMSize(vcpus=manifest.vcpus, memory_mib=manifest.memory_mib)
        except HypervisorError:
            size = VMSize()
        spec.cgroup = self._make_cgroup(container_id, size, undo)
        handle = driver.restore(spec, source)
        undo.callback(driver.stop, handle)
        return handle

    def _cgroup_path(self, container_id: str) -> str | None:
        parent = self.config.cgroup_parent
        return f"{parent}/{container_id}" if parent else None

    def _make_cgroup(self, container_id: str, size: VMSize, undo: contextlib.ExitStack) -> str | None:
        """The VM's own cgroup, limited to its memory (plus the VMM's overhead) and vCPUs."""
        path = self._cgroup_path(container_id)
        if path is None:
            return None
        cgroup = VMCgroup(path)
        memory = (size.memory_mib + self.config.vmm_overhead_mib) * 1024 * 1024
        undo.callback(cgroup.remove)
        cgroup.create(Limits(memory_bytes=memory, vcpus=size.vcpus))
        return path

    def remove_vm_cgroup(self, container_id: str, vm: VMHandle | None) -> None:
        """Kill whatever is left in the VM's cgroup and remove it (after the driver stopped the VM)."""
        path = (vm.endpoints.get(CGROUP_ENDPOINT) if vm else None) or self._cgroup_path(container_id)
        if path is None:
            return
        try:
            VMCgroup(path).remove()
        except HypervisorError as exc:
            raise RuntimeError_(str(exc), step="delete") from exc

    @staticmethod
    def _null_stdio(fds: contextlib.ExitStack) -> Stdio:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        fds.callback(os.close, fd)
        return (fd, fd, fd)

    @staticmethod
    def _console(socket_path: Path | None, console_path: Path | None, fds: contextlib.ExitStack) -> Stdio:
        if console_path is not None:
            slave = console.open_console_path(console_path)
        else:
            assert socket_path is not None
            master, slave = console.open_host_pty()
            try:
                console.send_master(socket_path, master, os.ttyname(slave))
            except BaseException:
                os.close(slave)
                raise
            finally:
                os.close(master)
        fds.callback(os.close, slave)
        return (slave, slave, slave)

    @staticmethod
    def _detach_quietly(driver: HypervisorDriver, handle: VMHandle, serial: str) -> None:
        """Rollback: unplug a disk attached for a create that failed later (best effort)."""
        with contextlib.suppress(HypervisorError):
            driver.detach_disk(handle, serial)

    @staticmethod
    def _destroy_quietly(client: AgentClient, container_id: str) -> None:
        try:
            client.call(DestroyContainer(container_id=container_id), Ok, timeout=30)
        except RuntimeError_ as exc:
            log.warning("rollback: destroying %s in the guest: %s", container_id, exc)

    # ---- queries and lifecycle -------------------------------------------------------

    def _guest_info(self, record: Record) -> ContainerInfo | None:
        """The guest's view of the container, or None when its VM is gone."""
        vm = record.state.vm
        if vm is None or not self.driver(record.state.hypervisor).alive(vm):
            return None
        try:
            return self._client(record).call(
                GetState(container_id=record.state.id), ContainerInfo, timeout=10
            )
        except AgentError:
            if not self.driver(record.state.hypervisor).alive(vm):
                return None
            raise

    def _refresh(self, record: Record) -> ContainerState:
        state = record.state.model_copy(deep=True)
        if state.status == "creating":
            return state
        if record.kind == "member":  # no container: alive means idle
            vm = state.vm
            alive = vm is not None and self.driver(state.hypervisor).alive(vm)
            state.status = "created" if alive else "stopped"
            return state
        if self._pod_paused(record):
            state.status = "paused"  # the guest agent cannot answer while its VM is paused
            return state
        info = self._guest_info(record)
        if info is None:
            # The VM is gone; the relay may have seen the container end before it went.
            state.status = "stopped"
            state.pid = 0
            state.exit_code = read_exit(self.store.dir(state.id) / EXIT_FILE)
            return state
        return self._with_info(state, info)

    @staticmethod
    def _with_info(state: ContainerState, info: ContainerInfo) -> ContainerState:
        state.status = info.status
        state.exit_code = info.exit_code
        state.started_at = _ts(info.started_at)
        state.finished_at = _ts(info.finished_at)
        if state.status == "stopped":
            state.pid = 0
        return state

    def state(self, container_id: str) -> ContainerState:
        validate_id(container_id)
        return self._refresh(self.store.load(container_id))

    def list(self) -> builtins.list[ContainerState]:
        states = []
        for container_id in self.store.ids():
            try:
                states.append(self.state(container_id))
            except NotFound:
                continue
        return states

    def start(self, container_id: str) -> ContainerState:
        record = self.store.load(validate_id(container_id))
        if record.state.status == "creating":
            raise WrongState(f"container {container_id!r} is creating, not created", step="start")
        # One round trip: the agent refuses anything but a created container, atomically.
        with _wrong_status("start"):
            info = self._client(record).call(StartContainer(container_id=container_id), ContainerInfo)
        return self._with_info(record.state.model_copy(deep=True), info)

    def kill(self, container_id: str, signal: str | int = "TERM") -> None:
        signum = parse_signal(signal)
        record = self.store.load(validate_id(container_id))
        if record.state.status == "creating":
            raise WrongState(f"container {container_id!r} is creating", step="kill")
        if self._pod_paused(record):
            raise WrongState(f"the VM of container {container_id!r} is paused; resume it first", step="kill")
        if self._guest_info(record) is None:
            raise WrongState(f"container {container_id!r} is stopped (its VM is gone)", step="kill")
        with _wrong_status("kill"):
            self._client(record).call(SignalContainer(container_id=container_id, signal=signum), Ok)

    def wait(self, container_id: str, timeout: float | None = None) -> int:
        record = self.store.load(validate_id(container_id))
        if self._guest_info(record) is None:
            raise WrongState(f"the VM of container {container_id!r} is gone; its status is lost", step="wait")
        reply = self._client(record).call(
            WaitExit(container_id=container_id, timeout=timeout),
            Exited,
            timeout=None if timeout is None else timeout + 10,
        )
        return reply.exit_code

    # ---- pause, resume, snapshot ----------------------------------------------------

    def _sandbox_record(self, container_id: str, step: str) -> Record:
        record = self.store.load(validate_id(container_id))
        if record.kind != "sandbox" or record.state.vm is None:
            raise WrongState(f"{container_id!r} is not a pod sandbox: only a whole VM is {step}d", step=step)
        if not self.driver(record.state.hypervisor).alive(record.state.vm):
            raise WrongState(f"the VM of sandbox {container_id!r} is not running", step=step)
        return record

    def _pod_paused(self, record: Record) -> bool:
        sandbox = record
        if record.kind == "container":
            try:
                sandbox = self.store.load(record.sandbox_id)
            except NotFound:
                return False
        return (
            sandbox.paused
            and sandbox.state.vm is not None
            and self.driver(sandbox.state.hypervisor).alive(sandbox.state.vm)
        )

    def pause(self, container_id: str) -> None:
        """Pause the pod sandbox's VM (every container in it); idempotent."""
        self._set_paused(container_id, True)

    def resume(self, container_id: str) -> None:
        self._set_paused(container_id, False)

    def _set_paused(self, container_id: str, paused: bool) -> None:
        """Pause or resume the sandbox's VM, then record which it now is."""
        record = self._sandbox_record(container_id, "pause" if paused else "resume")
        assert record.state.vm is not None
        driver = self.driver(record.state.hypervisor)
        (driver.pause if paused else driver.resume)(record.state.vm)
        record.paused = paused
        self.store.save(record)

    def snapshot(self, container_id: str, directory: Path | str) -> SnapshotManifest:
        """Snapshot the pod sandbox's VM into ``directory`` (inside the snapshot root); the VM
        is paused for it and resumed afterwards unless it was paused before."""
        record = self._sandbox_record(container_id, "snapshot")
        assert record.state.vm is not None
        target = snapshot_dir(self.root, directory, step="snapshot")
        driver = self.driver(record.state.hypervisor)
        try:
            return driver.snapshot(record.state.vm, target)
        finally:
            if not record.paused and driver.alive(record.state.vm):
                driver.resume(record.state.vm)

    def make_snapshot(self, name: str, size: VMSize | None = None) -> SnapshotManifest:
        """Boot a bare VM (guest agent ready, no sandbox, no container), snapshot it into
        ``<root>/snapshots/<name>`` and stop it: the template a snapshot pool restores from.

        Nothing but the snapshot directory remains, and on failure not even that.
        """
        target = snapshot_dir(self.root, validate_id(name), step="snapshot")
        size = size or VMSize()
        driver = self.driver()
        with contextlib.ExitStack() as undo:
            handle = self._boot(driver, f"snapshot-{name}", size, None, undo)
            return driver.snapshot(handle, target)
        raise AssertionError("unreachable")  # pragma: no cover (ExitStack swallows nothing)

    # ---- exec and files (vmsandbox.runtime.streams) ----------------------------------

    def agent_for(self, container_id: str) -> AgentClient:
        """The guest agent of the VM a running container lives in, for exec and file transfers."""
        record = self.store.load(validate_id(container_id))
        if record.state.status == "creating":
            raise WrongState(f"container {container_id!r} is creating, not running", step="exec")
        return self._client(record)

    def delete(self, container_id: str, force: bool = False) -> None:
        record = self.store.load(validate_id(container_id))
        current = self._refresh(record)
        if current.status == "paused" and force:
            # The guest must run to destroy its containers; resuming first keeps delete one path.
            sandbox = record if record.kind == "sandbox" else self.store.load(record.sandbox_id)
            self.resume(sandbox.state.id)
            current = self._refresh(record)
        if current.status != "stopped" and not force:
            raise WrongState(
                f"container {container_id!r} is {current.status}; stop it first or use --force", step="delete"
            )
        if record.kind == "sandbox":
            members = [r for r in self._records() if r.kind == "container" and r.sandbox_id == container_id]
            if members and not force:
                names = ", ".join(r.state.id for r in members)
                raise WrongState(f"sandbox {container_id!r} still has containers: {names}", step="delete")
            for member in members:  # the VM stops next: unplugging their disks first is moot
                self._teardown(member, detach=False)
        self._teardown(record)
        self.disks.evict()

    def _disks_in_use(self) -> set[str]:
        """The shared disks that container records (running or being created) still name."""
        return {r.disk_image for r in self._records() if r.disk_image is not None}

    def _records(self) -> builtins.list[Record]:
        out = []
        for container_id in self.store.ids():
            with contextlib.suppress(NotFound, ValueError):
                out.append(self.store.load(container_id))
        return out

    # ---- interrupted creates ------------------------------------------------------------

    def sweep(self) -> builtins.list[str]:
        """Finish what killed creators left: roll back their containers, stop unowned VMs.

        A create whose creator process died (SIGKILL, OOM, a restarted node agent's container)
        never ran its rollback. Its id directory still names the dead creator, and its VM's
        directory (recorded before the VMM started) still holds the handle. Returns what was
        cleaned, one line each.
        """
        done: builtins.list[str] = []
        for container_id in self.store.ids():
            if self.store.creating_elsewhere(container_id):
                continue
            try:
                record = self.store.load(container_id)
            except NotFound:  # killed before its first record: nothing was started yet
                self.store.remove(container_id)
                done.append(f"{container_id}: removed an id reserved by a dead create")
                continue
            if record.state.status == "creating":
                self._teardown(record)
                done.append(f"{container_id}: rolled back a create whose creator died")
        owned = {str(self.store.vm_dir(vm_id_for(cid))) for cid in self.store.ids()}
        owned |= {str(r.state.vm.state_dir) for r in self._records() if r.state.vm is not None}
        for vm_dir in self.store.vm_dirs():
            if str(vm_dir) not in owned:
                self._stop_vm_dir(vm_dir, hypervisor=None)
                done.append(f"{vm_dir.name}: stopped a VM no container owns")
        if self.config.cgroup_parent:
            for name in remove_unowned(self.config.cgroup_parent, set(self.store.ids())):
                done.append(f"{name}: removed a VM cgroup no container owns")
        return done

    def _recorded_vm(self, record: Record) -> VMHandle | None:
        """The record's VM; for a create killed before recording it, the sandbox's VM (a pod
        container) or the handle its driver saved when the VMM started (a sandbox)."""
        if record.state.vm is not None:
            return record.state.vm
        if not record.owns_vm:
            with contextlib.suppress(NotFound, ValueError):
                return self.store.load(record.sandbox_id).state.vm
            return None
        with contextlib.suppress(OSError, ValueError):
            return VMHandle.load(self.store.vm_dir(vm_id_for(record.state.id)))
        return None

    def _stop_vm_dir(self, vm_dir: Path, hypervisor: str | None) -> None:
        """Stop whatever runs for ``vm_dir`` (through its saved handle when there is one)."""
        with contextlib.suppress(OSError, ValueError, HypervisorError):
            handle = VMHandle.load(vm_dir)
            self.driver(hypervisor or handle.hypervisor).stop(handle)
        kill_mentioning(str(vm_dir))  # a VMM killed before its handle was saved
        _remove_tree(vm_dir)
        _remove_empty(vm_dir.parent)

    def _teardown(self, record: Record, *, detach: bool = True) -> None:
        vm = self._recorded_vm(record)
        driver = self.driver(record.state.hypervisor)
        if vm is not None and record.kind != "member" and driver.alive(vm):
            self._destroy_quietly(AgentClient(driver, vm), record.state.id)
            if detach and not record.owns_vm:
                try:  # free the hot-plug slot for the sandbox's next container (idempotent)
                    driver.detach_disk(vm, disk_serial(record.state.id))
                except HypervisorError as exc:
                    raise RuntimeError_(str(exc), step="delete") from exc
        if record.relay_pid is not None:
            _kill_relay(record.relay_pid, grace=2.0, started=record.relay_start)
        if record.owns_vm and vm is not None:
            try:
                driver.stop(vm)
            except HypervisorError as exc:
                raise RuntimeError_(str(exc), step="delete") from exc
            _remove_empty(vm.state_dir.parent)
        elif record.owns_vm and record.state.status == "creating":
            self._stop_vm_dir(self.store.vm_dir(vm_id_for(record.state.id)), record.state.hypervisor)
        if record.owns_vm:
            self.remove_vm_cgroup(record.state.id, vm)
        self.store.remove(record.state.id)


def vm_id_for(container_id: str) -> str:
    """The id (and directory name) of the VM a pod sandbox boots: fixed before the VMM starts."""
    return "vm-" + hashlib.sha256(container_id.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _wrong_status(step: str) -> Iterator[None]:
    """Turn the agent's status refusals into :class:`WrongState` errors for ``step``."""
    try:
        yield
    except AgentError as exc:
        if exc.step == f"guest {WRONG_STATUS}":
            raise WrongState(exc.detail, step=step) from exc
        raise


def _relay_alive(pid: int, started: str | None) -> bool:
    """Running and (when its start time was recorded) the very relay that was started."""
    if not running(pid, started):
        return False
    try:  # our own child (the creating process) is reaped, not left a zombie
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass
    return running(pid, started)


def _kill_relay(pid: int, grace: float = 0.0, started: str | None = None) -> None:
    """Give a relay ``grace`` seconds to finish on its own, then kill and reap it."""
    deadline = time.monotonic() + grace
    while _relay_alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.01)
    if _relay_alive(pid, started):
        signal_recorded(pid, started, signals.SIGKILL)
        deadline = time.monotonic() + 5
        while _relay_alive(pid, started) and time.monotonic() < deadline:
            time.sleep(0.005)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _remove_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
