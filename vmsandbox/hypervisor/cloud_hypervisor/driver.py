"""The production driver: one ``cloud-hypervisor`` process per VM, driven over its REST API.

Boot follows the order the real VMM requires (and Kata Containers uses): launch with
``--api-socket``, poll ``vmm.ping``, ``vm.create`` with a complete config, check ``Created``,
``vm.boot``, check ``Running``, then reach the guest agent over hybrid vsock. Stop is
``vmm.shutdown``, a bounded wait, then SIGKILL, and removes the sockets the VMM never removes.

Every method works from a fresh driver given only the :class:`VMHandle` (the runtime CLI is a
short-lived process); when this instance started the VMM it also knows the exit status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsandbox.hypervisor.base import (
    CGROUP_ENDPOINT,
    GUEST_AGENT_PORT,
    BootTimings,
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    SnapshotManifest,
    VMHandle,
    VMSpec,
)
from vmsandbox.hypervisor.cloud_hypervisor import snapshot as ch_snapshot
from vmsandbox.hypervisor.cloud_hypervisor import vmm_process
from vmsandbox.hypervisor.cloud_hypervisor.client import CloudHypervisorClient
from vmsandbox.hypervisor.cloud_hypervisor.errors import (
    ApiUnreachable,
    CloudHypervisorError,
    UnexpectedVmState,
    VmmDied,
    VmmExited,
    VmmNotReady,
)
from vmsandbox.hypervisor.cloud_hypervisor.layout import VmLayout
from vmsandbox.hypervisor.cloud_hypervisor.responses import PciDeviceInfo, VmCounters, VmInfo, VmState
from vmsandbox.hypervisor.cloud_hypervisor.vmconfig import (
    ConsoleConfig,
    CpusConfig,
    DiskConfig,
    MemoryConfig,
    NetConfig,
    PayloadConfig,
    RngConfig,
    SerialConfig,
    VmConfig,
    VmSnapshotConfig,
    VsockConfig,
)
from vmsandbox.hypervisor.cloud_hypervisor.vsock import connect_until
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.detached import Detached, exit_status, waiter_gone
from vmsandbox.hypervisor.landlock import landlock_abi
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.hypervisor.procs import running
from vmsandbox.hypervisor.snapfiles import disks_for_restore, keep_disks, remove_dir, snapshot_dir
from vmsandbox.hypervisor.taps import open_tap
from vmsandbox.hypervisor.vmmuser import RunsAsVmmUser, give_access

log = logging.getLogger(__name__)

#: Guest context id of every VM: each VM has its own vsock socket, so they need not differ.
GUEST_CID = 3
ROOT_DISK_SERIAL = "vmsb-root"
#: The id of the sandbox's NIC, at boot and hot-plugged alike.
NIC_ID = "net0"
BASE_CMDLINE = ("console=ttyS0", "panic=-1", "quiet")
MIB = 1024 * 1024


class Timeouts(BaseModel):
    """Seconds; the defaults are Kata's budgets for Cloud Hypervisor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ready: float = Field(default=10.0, gt=0)
    ready_interval: float = Field(default=0.01, gt=0)
    call: float = Field(default=1.0, gt=0)
    #: Per call for vm.create and vm.boot (boot returns once vCPUs run).
    boot: float = Field(default=10.0, gt=0)
    hotplug: float = Field(default=5.0, gt=0)
    shutdown: float = Field(default=3.0, gt=0)
    #: vm.snapshot writes all guest memory; vm.restore (copy mode) reads it all.
    snapshot: float = Field(default=120.0, gt=0)
    exit_wait: float = Field(default=3.0, gt=0)


def vmm_args(config: HypervisorConfig, spec: VMSpec, read_only: list[Path] | None = None) -> list[str]:
    """The VMM's flags: the admin's, then its seccomp filter (always on) and, where the kernel
    has Landlock, confinement to the files of its VM config plus the hotplug directories (and,
    for a restore, read access to the snapshot)."""
    extra = list(config.cloud_hypervisor_args)
    if any(arg == "--seccomp" or arg.startswith("--seccomp=") for arg in extra):
        what = "VMSANDBOX_CLOUD_HYPERVISOR_ARGS: --seccomp is set by the driver (always true)"
        raise HypervisorError(what, step="vmm start")
    args = [*extra, "--seccomp", "true"]
    if landlock_abi() > 0 and "--landlock" not in extra:
        args.append("--landlock")
        rules = [f"path={d.absolute()},access=rw" for d in spec.hotplug_dirs]
        rules += [f"path={d.absolute()},access=r" for d in read_only or []]
        if rules:
            args += ["--landlock-rules", *rules]
    return args


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 3)


class CloudHypervisorDriver(HypervisorDriver, RunsAsVmmUser):
    name = "cloud-hypervisor"
    shares_host_fs = False

    def __init__(self, config: HypervisorConfig | None = None, timeouts: Timeouts | None = None) -> None:
        self.config = config or HypervisorConfig()
        self.timeouts = timeouts or Timeouts()
        #: VMMs this instance started, by PID, with the PID of the process that started them:
        #: only that parent can wait for them (a forked copy of this driver must not try).
        self._children: dict[int, tuple[int, Detached]] = {}

    # -- the VmConfig -------------------------------------------------------------------------

    def vm_config(self, spec: VMSpec, layout: VmLayout) -> VmConfig:
        """The complete config sent with ``vm.create``; nothing is left to server defaults
        that would surprise (console defaults to Tty, serial to Null)."""
        if spec.kernel is None:
            raise CloudHypervisorError("VMSpec.kernel is required for a Cloud Hypervisor VM", step="vm spec")
        disks: list[DiskConfig] = []
        if spec.root_disk is not None:
            disks.append(self._disk(spec.root_disk, ROOT_DISK_SERIAL, readonly=True))
        disks.extend(self._disk(d.path, d.serial, d.readonly) for d in spec.disks)
        return VmConfig(
            payload=PayloadConfig(
                kernel=str(spec.kernel.absolute()),
                initramfs=None if spec.initramfs is None else str(spec.initramfs.absolute()),
                cmdline=" ".join([*BASE_CMDLINE, *spec.kernel_args]),
            ),
            cpus=CpusConfig(boot_vcpus=spec.vcpus, max_vcpus=spec.vcpus),
            memory=MemoryConfig(size=spec.memory_mib * MIB),
            disks=disks or None,
            net=[NetConfig(tap=spec.network.tap, mac=spec.network.mac, id=NIC_ID)]
            if spec.network is not None and spec.network.tap is not None
            else None,
            vsock=VsockConfig(cid=GUEST_CID, socket=str(layout.vsock_socket)),
            serial=SerialConfig(mode="File", file=str(layout.serial_log)),
            console=ConsoleConfig(mode="Off"),
            rng=RngConfig(src="/dev/urandom"),
        )

    @staticmethod
    def _disk(path: Path, serial: str, readonly: bool) -> DiskConfig:
        # The serial doubles as the device id: unique per VM and never starting with "__".
        return DiskConfig(
            path=str(path.absolute()), readonly=readonly, serial=serial, id=serial, image_type="Raw"
        )

    # -- boot ---------------------------------------------------------------------------------

    def boot(self, spec: VMSpec) -> VMHandle:
        layout = VmLayout.under(spec.state_dir)
        vm_config = self.vm_config(spec, layout)
        created_dir = not layout.state_dir.exists()
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        self._clear_stale(layout)  # refuses before touching anything when a live VMM owns the dir
        try:
            started = time.monotonic()
            child = self._launch(spec, layout, vmm_args(self.config, spec))
        except BaseException:
            self._remove_files(layout, created_dir)
            raise
        handle = self._handle(spec, layout, child)
        with self._torn_down_on_failure("boot", handle, layout, created_dir):
            handle.save()
            with self._wait_ready(child, layout) as client:
                timings = BootTimings(vmm_start=_ms(started))
                started = time.monotonic()
                try:
                    client.create(vm_config, timeout=self.timeouts.boot)
                    self._expect_state(client, "vm.create", "Created")
                    client.boot(timeout=self.timeouts.boot)
                    self._expect_state(client, "vm.boot", "Running")
                except ApiUnreachable as exc:
                    if vmm_process.wait_gone(child.pid, 0.5, child):  # it crashed mid-call
                        raise VmmExited(
                            f"cloud-hypervisor {exc.endpoint}",
                            child.pid,
                            child.returncode,
                            self._log_tail(layout),
                        ) from exc
                    raise
                timings.vm_boot = _ms(started)
            started = time.monotonic()
            probe = self._connect(handle, layout, spec.agent_timeout)
            probe.close()
            timings.agent_ready = _ms(started)
        handle.timings = timings
        handle.save()
        log.info(
            "VM %s: VMM %d up in %.0f ms, guest booted in %.0f ms, agent reachable after %.0f ms",
            spec.vm_id,
            child.pid,
            timings.vmm_start,
            timings.vm_boot,
            timings.agent_ready,
        )
        return handle

    def _launch(self, spec: VMSpec, layout: VmLayout, args: list[str]) -> Detached:
        """Start the VMM detached in the VM's cgroup, in the tap's namespace when it has one."""
        net = spec.network
        files = [(Path(p), True) for p in (spec.kernel, spec.initramfs, spec.root_disk) if p is not None]
        give_access(self.user, layout.state_dir, [*files, *((d.path, d.readonly) for d in spec.disks)])
        return vmm_process.launch(
            self.config.cloud_hypervisor_binary,
            args,
            layout.api_socket,
            layout.vmm_log,
            spec.cgroup,
            netns=net.tap_netns if net is not None and net.tap is not None else None,
            user=self.user,
        )

    def _handle(self, spec: VMSpec, layout: VmLayout, child: Detached, **extra: str) -> VMHandle:
        """The handle of a VMM this process just started (remembered as its child)."""
        self._children[child.pid] = (os.getpid(), child)
        return VMHandle(
            vm_id=spec.vm_id,
            hypervisor=self.name,
            state_dir=layout.state_dir,
            vmm_pid=child.pid,
            endpoints={
                **layout.endpoints(),
                **({CGROUP_ENDPOINT: spec.cgroup} if spec.cgroup else {}),
                "vmm_waiter": child.waiter,
                **extra,
            },
        )

    def _clear_stale(self, layout: VmLayout) -> None:
        """Remove what a previous, dead VM left; refuse if a live VMM still serves this VM."""
        for path in (layout.api_socket, layout.vsock_socket):
            if path.exists() and _accepts(path):
                raise CloudHypervisorError(
                    f"{path} is served by a running process; stop that VM first",
                    step="cloud-hypervisor launch",
                )
        for path in layout.files():
            path.unlink(missing_ok=True)

    def _wait_ready(self, child: Detached, layout: VmLayout) -> CloudHypervisorClient:
        """Poll ``vmm.ping`` (Kata: every 10 ms, 1 s per call, 10 s in all) while the child lives."""
        client = CloudHypervisorClient(layout.api_socket, timeout=self.timeouts.call)
        deadline = time.monotonic() + self.timeouts.ready
        last = "the API socket does not exist yet"
        try:
            while True:
                if child.poll() is not None:
                    raise VmmExited(
                        "cloud-hypervisor vmm.ping", child.pid, child.returncode, self._log_tail(layout)
                    )
                if layout.api_socket.exists():
                    remaining = deadline - time.monotonic()
                    try:
                        client.ping(timeout=max(min(self.timeouts.call, remaining), 0.01))
                        return client
                    except ApiUnreachable as exc:
                        last = exc.detail
                if time.monotonic() >= deadline:
                    raise VmmNotReady(
                        str(layout.api_socket), self.timeouts.ready, last, self._log_tail(layout)
                    )
                time.sleep(self.timeouts.ready_interval)
        except BaseException:
            client.close()
            raise

    @staticmethod
    def _log_tail(layout: VmLayout) -> str:
        return vmm_process.log_tail(layout.vmm_log)

    @staticmethod
    def _expect_state(client: CloudHypervisorClient, after: str, expected: VmState) -> None:
        state = client.info().state
        if state != expected:
            raise UnexpectedVmState(after, expected, state)

    # -- running VMs ---------------------------------------------------------------------------

    def connect(self, handle: VMHandle, timeout: float = 10.0) -> socket.socket:
        return self._connect(handle, VmLayout.of(handle), timeout)

    def _connect(self, handle: VMHandle, layout: VmLayout, timeout: float) -> socket.socket:
        return connect_until(
            layout.vsock_socket, GUEST_AGENT_PORT, timeout, check_alive=lambda: self.check_alive(handle)
        )

    def alive(self, handle: VMHandle) -> bool:
        child = self._child(handle.vmm_pid)
        if child is not None:
            return child.poll() is None
        layout = VmLayout.of(handle)
        return running(handle.vmm_pid) and vmm_process.owns_socket(handle.vmm_pid, layout.api_socket)

    def check_alive(self, handle: VMHandle) -> None:
        """Raise :class:`VmmDied` (with the exit status when known) if the VMM is gone."""
        if not self.alive(handle):
            child = self._child(handle.vmm_pid)
            raise VmmDied(handle.vm_id, handle.vmm_pid, None if child is None else child.returncode)

    def exit_status(self, handle: VMHandle) -> int | None:
        """The VMM's exit status once it ended (its waiter wrote it, whoever started it), else None."""
        child = self._child(handle.vmm_pid)
        if child is not None:
            return child.poll()
        return None if self.alive(handle) else exit_status(VmLayout.of(handle).vmm_status)

    def _child(self, pid: int) -> Detached | None:
        """The Popen of a VMM this very process started, else None."""
        owner, child = self._children.get(pid, (0, None))
        return child if owner == os.getpid() else None

    def _client(self, handle: VMHandle, timeout: float | None = None) -> CloudHypervisorClient:
        self.check_alive(handle)
        return CloudHypervisorClient(VmLayout.of(handle).api_socket, timeout=timeout or self.timeouts.call)

    def attach_disk(self, handle: VMHandle, disk: DiskSpec) -> None:
        self.hotplug_disk(handle, disk)

    def hotplug_disk(self, handle: VMHandle, disk: DiskSpec) -> PciDeviceInfo | None:
        """``vm.add-disk``; returns where the disk landed (None when cold-added before boot)."""
        if (user := self.user) is not None:  # the VMM opens the file as its user
            (user.readable if disk.readonly else user.own)(disk.path)
        with self._client(handle, self.timeouts.hotplug) as client:
            try:
                return client.add_disk(self._disk(disk.path, disk.serial, disk.readonly))
            except CloudHypervisorError:
                self.check_alive(handle)
                raise

    def detach_disk(self, handle: VMHandle, serial: str) -> None:
        """``vm.remove-device`` with the id the disk was added under (its serial, see ``_disk``).

        Released versions answer 500, not 404, for an unknown id, so whether the disk is still
        there is read from ``vm.info`` first: a second detach is a no-op, not an error.
        """
        self._remove_device(handle, "disks", serial)

    def attach_nic(self, handle: VMHandle, network: NetworkAttachment) -> None:
        """``vm.add-net`` with the tap's descriptor as SCM_RIGHTS: the tap was opened here (as
        root, in its namespace), so the VMM needs neither its namespace nor the right to open it."""
        if network.mac is None:
            raise CloudHypervisorError("the network attachment has no MAC", step="attach nic")
        fd = open_tap(network)
        try:
            with self._client(handle, self.timeouts.hotplug) as client:
                try:
                    client.add_net(NetConfig(mac=network.mac, id=NIC_ID), [fd], timeout=self.timeouts.hotplug)
                except CloudHypervisorError:
                    self.check_alive(handle)
                    raise
        finally:
            os.close(fd)  # the VMM holds its own copy from here on

    def detach_nic(self, handle: VMHandle) -> None:
        self._remove_device(handle, "net", NIC_ID)

    def _remove_device(self, handle: VMHandle, section: str, device_id: str) -> None:
        """``vm.remove-device`` unless ``vm.info``'s config has no such device in ``section``."""
        with self._client(handle, self.timeouts.hotplug) as client:
            try:
                devices = client.info().config.get(section) or []
                if any(d.get("id") == device_id for d in devices):
                    client.remove_device(device_id)
            except CloudHypervisorError:
                self.check_alive(handle)
                raise

    def info(self, handle: VMHandle) -> VmInfo:
        with self._client(handle) as client:
            return client.info()

    def pause(self, handle: VMHandle) -> None:
        """``vm.pause`` unless already Paused (the VMM refuses Paused -> Paused with a 500)."""
        with self._client(handle) as client:
            if client.info().state != "Paused":
                client.pause()
                self._expect_state(client, "vm.pause", "Paused")

    def resume(self, handle: VMHandle) -> None:
        with self._client(handle) as client:
            if client.info().state != "Running":
                client.resume()
                self._expect_state(client, "vm.resume", "Running")

    def paused(self, handle: VMHandle) -> bool:
        return self.info(handle).state == "Paused"

    # -- snapshot and restore -------------------------------------------------------------------

    def snapshot(self, handle: VMHandle, directory: Path) -> SnapshotManifest:
        with snapshot_dir(directory) as target:
            if (user := self.user) is not None:  # the VMM writes the snapshot files itself
                user.own(target)
            self.pause(handle)
            with self._client(handle, self.timeouts.snapshot) as client:
                version = client.ping().version
                config = client.info().config
                client.snapshot(VmSnapshotConfig(destination_url=f"file://{target}"))
            kept = keep_disks(ch_snapshot.vm_disks(config, ROOT_DISK_SERIAL), target)
            manifest = ch_snapshot.manifest_from_config(handle.vm_id, config, version, ROOT_DISK_SERIAL, kept)
            manifest.save(target)
        return manifest

    def restore(self, spec: VMSpec, directory: Path) -> VMHandle:
        directory = directory.absolute()
        manifest = SnapshotManifest.load(directory, self.name)
        layout = VmLayout.under(spec.state_dir)
        created_dir = not layout.state_dir.exists()
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        self._clear_stale(layout)
        source = layout.state_dir / ch_snapshot.RESTORE_DIR
        started = time.monotonic()
        try:
            disks = disks_for_restore(manifest, directory, layout.state_dir)
            ch_snapshot.prepare_source(directory, layout, spec, disks)
            extra = [*spec.hotplug_dirs, *(d.path.parent for d in disks)]
            restore_spec = spec.model_copy(update={"hotplug_dirs": extra})
            child = self._launch(
                spec, layout, vmm_args(self.config, restore_spec, read_only=[directory, source])
            )
        except BaseException:
            remove_dir(source)
            for disk in manifest.disks:
                if not disk.readonly:
                    (layout.state_dir / disk.path.name).unlink(missing_ok=True)
            self._remove_files(layout, created_dir)
            raise
        handle = self._handle(spec, layout, child, restored_from=str(directory))
        with self._torn_down_on_failure("restore", handle, layout, created_dir):
            handle.save()
            with self._wait_ready(child, layout) as client:
                timings = BootTimings(vmm_start=_ms(started))
                started = time.monotonic()
                config = ch_snapshot.restore_config(source, client.ping().version)
                client.restore(config, timeout=self.timeouts.snapshot)
                if config.resume is None:
                    client.resume()
                self._expect_state(client, "vm.restore", "Running")
                timings.vm_boot = _ms(started)
            started = time.monotonic()
            self._connect(handle, layout, spec.agent_timeout).close()
            timings.agent_ready = _ms(started)
        handle.timings = timings
        handle.save()
        return handle

    def counters(self, handle: VMHandle) -> VmCounters:
        with self._client(handle) as client:
            return client.counters()

    # -- stop ----------------------------------------------------------------------------------

    def stop(self, handle: VMHandle) -> None:
        layout = VmLayout.of(handle)
        self._teardown(handle, layout)
        self._remove_files(layout, remove_dir=True)

    @contextlib.contextmanager
    def _torn_down_on_failure(
        self, step: str, handle: VMHandle, layout: VmLayout, created_dir: bool
    ) -> Iterator[None]:
        """Boot and restore: a VMM that started but failed to come up is stopped and its files removed."""
        try:
            yield
        except BaseException as exc:
            log.warning("VM %s: %s failed (%s); tearing down VMM %d", handle.vm_id, step, exc, handle.vmm_pid)
            self._teardown(handle, layout)
            self._remove_files(layout, created_dir)
            raise

    def _teardown(self, handle: VMHandle, layout: VmLayout) -> None:
        """``vmm.shutdown`` -> wait -> SIGKILL; leaves the files to the caller."""
        pid = handle.vmm_pid
        child = self._child(pid)
        self._children.pop(pid, None)
        alive = (
            child.poll() is None
            if child is not None
            else running(pid) and vmm_process.owns_socket(pid, layout.api_socket)
        )
        if alive:
            if layout.api_socket.exists():
                with (
                    contextlib.suppress(CloudHypervisorError),
                    CloudHypervisorClient(layout.api_socket, timeout=self.timeouts.shutdown) as client,
                ):
                    client.shutdown_vmm()
            if not vmm_process.wait_gone(pid, self.timeouts.exit_wait, child):
                log.warning("VM %s: VMM %d still running after vmm.shutdown; SIGKILL", handle.vm_id, pid)
                vmm_process.kill(pid, child)
        waiter_gone(handle.endpoints.get("vmm_waiter"))  # it records the exit status, then ends

    @staticmethod
    def _remove_files(layout: VmLayout, remove_dir: bool) -> None:
        for path in layout.files():
            path.unlink(missing_ok=True)
        _remove_restore_files(layout)
        if remove_dir:
            with contextlib.suppress(OSError):
                layout.state_dir.rmdir()


def _remove_restore_files(layout: VmLayout) -> None:
    """What a restore added to the state directory: its source directory and disk copies."""
    shutil.rmtree(layout.state_dir / ch_snapshot.RESTORE_DIR, ignore_errors=True)
    for copy in layout.state_dir.glob("disk-*.img"):
        copy.unlink(missing_ok=True)


def _accepts(path: Path) -> bool:
    """Whether something is listening on the unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
