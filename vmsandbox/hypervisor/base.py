"""The contract every hypervisor driver keeps, so the runtime never knows which one it drives.

A driver boots one VM per pod sandbox, hands back a :class:`VMHandle` that is persisted as JSON
in the VM's state directory (so a restarted node agent can adopt the VM instead of rebooting it),
and opens stream connections to the guest agent inside the VM. How the stream is carried
(hybrid vsock, virtio-serial, unix socket) is the driver's business.

Drivers must be all-or-nothing: when :meth:`HypervisorDriver.boot` raises, no VMM process,
socket or file it created may remain.
"""

from __future__ import annotations

import abc
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.protocol import Pong
from vmsandbox.hypervisor.network import NetworkAttachment

HypervisorName = Literal["cloud-hypervisor", "qemu", "process"]

#: The guest agent listens on this port (vsock) / port name (virtio-serial) in every VM.
GUEST_AGENT_PORT = 1024
GUEST_AGENT_SERIAL_NAME = "io.vmsandbox.agent"
#: ``VMHandle.endpoints`` key of the VM's serial console log, where the backend keeps one.
SERIAL_LOG_ENDPOINT = "serial_log"
#: ``VMHandle.endpoints`` key of the cgroup the VMM runs in (``VMSpec.cgroup``), when it has one.
CGROUP_ENDPOINT = "cgroup"

#: Longest AF_UNIX path (sun_path is 108 bytes including the terminating NUL).
UNIX_PATH_MAX = 107


class HypervisorError(VMSandboxError):
    """A VM could not be booted, reached or stopped."""

    step = "hypervisor"


class VMGone(HypervisorError):
    """The VMM process died while the VM was supposed to be running."""


class SnapshotUnsupported(HypervisorError):
    """This backend cannot snapshot or restore a VM (the process backend has no VM memory)."""

    step = "snapshot"


class DiskSpec(BaseModel):
    """A raw disk image attached to the VM as virtio-blk, found in the guest by its serial."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    serial: str = Field(max_length=20, pattern=r"^[A-Za-z0-9_.-]+$")
    readonly: bool = True


class VMSpec(BaseModel):
    """What the runtime asks of a driver for one pod sandbox."""

    model_config = ConfigDict(extra="forbid")

    vm_id: str
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=512, ge=128)
    #: Per-VM directory owned by the driver: API sockets, vsock sockets, logs, handle.json.
    state_dir: Path
    #: Guest kernel, initramfs and read-only root image (None for the process backend).
    kernel: Path | None = None
    initramfs: Path | None = None
    root_disk: Path | None = None
    #: Extra disks attached at boot (the sandbox container's root filesystem disk).
    disks: list[DiskSpec] = Field(default_factory=list)
    #: Where disks attached later (containers joining the VM) live: a VMM confined to the
    #: files it was given (Cloud Hypervisor's Landlock) must still be able to open them.
    hotplug_dirs: list[Path] = Field(default_factory=list)
    kernel_args: list[str] = Field(default_factory=list)
    #: The NIC the node prepared (a tap, or a namespace for the process backend); None: no network.
    network: NetworkAttachment | None = None
    #: Seconds to wait for the guest agent to accept a connection after boot.
    agent_timeout: float = 45.0
    #: The cgroup (relative to every hierarchy's root, already made by the caller) the VMM's
    #: processes start in; None: the caller's own.
    cgroup: str | None = None


class BootTimings(BaseModel):
    """Milliseconds spent in each stage of one boot; fed into the resource's bootTimings."""

    vmm_start: float = 0.0
    vm_boot: float = 0.0
    agent_ready: float = 0.0
    #: From the guest's own clock, when its agent reports it: kernel start to /init, and /init
    #: to the agent listening. The host-side stages above also hold console and polling delays.
    kernel_to_init: float | None = None
    init_to_agent_ready: float | None = None

    @classmethod
    def between(cls, start: float, vmm_up: float, booted: float, agent_up: float) -> BootTimings:
        """The host-side stages from the ``time.monotonic()`` marks that close each of them."""
        return cls(
            vmm_start=(vmm_up - start) * 1000,
            vm_boot=(booted - vmm_up) * 1000,
            agent_ready=(agent_up - booted) * 1000,
        )

    def add_guest_clock(self, pong: Pong) -> None:
        """Take the guest's own start timestamps from its agent's pong, when it sent them."""
        if pong.init_uptime is not None and pong.ready_uptime is not None:
            self.kernel_to_init = pong.init_uptime * 1000
            self.init_to_agent_ready = max(0.0, pong.ready_uptime - pong.init_uptime) * 1000


class VMHandle(BaseModel):
    """Everything needed to reach a running VM again, from any process (persisted as JSON)."""

    vm_id: str
    hypervisor: HypervisorName
    state_dir: Path
    vmm_pid: int
    #: Driver-specific addresses (API socket, vsock socket, QMP socket, agent socket...).
    endpoints: dict[str, str] = Field(default_factory=dict)
    timings: BootTimings = Field(default_factory=BootTimings)

    def save(self) -> Path:
        path = self.state_dir / "handle.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> VMHandle:
        return cls.model_validate_json((state_dir / "handle.json").read_text())


class HypervisorDriver(abc.ABC):
    """One backend: Cloud Hypervisor, QEMU, or the VM-less process backend."""

    name: ClassVar[HypervisorName]
    #: True when the guest agent sees the host's filesystem (process backend): the runtime then
    #: hands it the bundle's rootfs path; otherwise it builds an ext4 disk and attaches it.
    shares_host_fs: ClassVar[bool] = False

    @abc.abstractmethod
    def boot(self, spec: VMSpec) -> VMHandle:
        """Start the VMM, boot the guest and wait until the guest agent answers.

        Raises :class:`HypervisorError` naming the stage on failure, after tearing down
        everything it started.
        """

    @abc.abstractmethod
    def connect(self, handle: VMHandle, timeout: float = 10.0) -> socket.socket:
        """Open a new byte stream to the guest agent (each caller gets its own)."""

    @abc.abstractmethod
    def attach_disk(self, handle: VMHandle, disk: DiskSpec) -> None:
        """Hot-plug a disk into a running VM (a pod container's root filesystem)."""

    @abc.abstractmethod
    def detach_disk(self, handle: VMHandle, serial: str) -> None:
        """Unplug a disk :meth:`attach_disk` hot-plugged, so its slot serves the next container.

        Idempotent: a disk that is not attached (any more) is no error. The guest must have
        released it (the container is gone) before this is called.
        """

    def attach_nic(self, handle: VMHandle, network: NetworkAttachment) -> None:
        """Hot-plug the sandbox's NIC (``network.tap``, ``network.mac``) into a running VM that
        booted without one: a pool member or a snapshot's copy, claimed by a networked sandbox.

        The caller (root) opens the tap, in ``network.tap_netns`` when set; the VMM gets only the
        descriptor. All or nothing: on failure nothing of the NIC is left in the VM.
        """
        raise HypervisorError(f"the {self.name} backend cannot hot-plug a NIC", step="attach nic")

    @abc.abstractmethod
    def detach_nic(self, handle: VMHandle) -> None:
        """Unplug the NIC :meth:`attach_nic` added and release its tap; idempotent."""

    @abc.abstractmethod
    def alive(self, handle: VMHandle) -> bool:
        """Whether the VMM process of this VM is still running."""

    @abc.abstractmethod
    def stop(self, handle: VMHandle) -> None:
        """Stop the VM and remove every socket and file it left; idempotent."""

    # -- pause, snapshot, restore ------------------------------------------------------------

    @abc.abstractmethod
    def pause(self, handle: VMHandle) -> None:
        """Stop the guest's vCPUs (or processes) without losing any state; idempotent.

        A paused VM keeps its memory, disks and host sockets; its guest agent does not answer
        until :meth:`resume`. Raises :class:`VMGone` when the VM is not running.
        """

    @abc.abstractmethod
    def resume(self, handle: VMHandle) -> None:
        """Let a paused VM run again from where it stopped; idempotent."""

    @abc.abstractmethod
    def paused(self, handle: VMHandle) -> bool:
        """Whether the VM is paused (asked of the VMM, not of local state)."""

    def snapshot(self, handle: VMHandle, directory: Path) -> SnapshotManifest:
        """Pause the VM (it stays paused) and write its full state into ``directory``.

        ``directory`` must not exist or be empty; it is created, and on failure removed again.
        It holds the guest memory and device state plus ``snapshot.json``
        (:class:`SnapshotManifest`): what :meth:`restore` needs. Read-only disks are referred to
        by path (they must still exist at restore); writable disks are copied in. The source VM
        stays paused: the caller resumes or stops it.
        """
        raise SnapshotUnsupported(f"the {self.name} backend cannot snapshot a VM")

    def restore(self, spec: VMSpec, directory: Path) -> VMHandle:
        """Start a new VM from a snapshot :meth:`snapshot` wrote, resumed, its agent reachable.

        From ``spec`` only ``vm_id``, ``state_dir``, ``network``, ``hotplug_dirs`` and
        ``agent_timeout`` count: size, kernel and disks come from the snapshot. The snapshot is
        left untouched, so one snapshot restores into many VMs; each gets its own copy of the
        writable disks. All-or-nothing like :meth:`boot`. ``handle.timings.vm_boot`` is the
        restore itself and ``agent_ready`` the wait for the guest agent after it.
        """
        raise SnapshotUnsupported(f"the {self.name} backend cannot restore a VM from a snapshot")


#: File in every snapshot directory describing it (:class:`SnapshotManifest`).
SNAPSHOT_MANIFEST = "snapshot.json"


class SnapshotManifest(BaseModel):
    """What a snapshot directory holds besides the VMM's own files; written last, so a
    directory without it is an incomplete snapshot."""

    model_config = ConfigDict(extra="forbid")

    hypervisor: HypervisorName
    #: The VM the snapshot was taken of.
    source_vm_id: str
    vcpus: int
    memory_mib: int
    kernel: Path | None = None
    initramfs: Path | None = None
    root_disk: Path | None = None
    #: Every disk the VM had, hot-plugged ones included. A writable disk's ``path`` is a file
    #: name inside the snapshot directory (copied at snapshot time); a read-only one's is absolute.
    disks: list[DiskSpec] = Field(default_factory=list)
    #: Driver details needed to rebuild the same machine (VMM version, accelerator, slots).
    details: dict[str, str] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)

    def save(self, directory: Path) -> Path:
        path = directory / SNAPSHOT_MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: Path, hypervisor: HypervisorName | None = None) -> SnapshotManifest:
        """The manifest in ``directory``; with ``hypervisor``, refused unless that backend wrote it."""
        path = directory / SNAPSHOT_MANIFEST
        try:
            manifest = cls.model_validate_json(path.read_text())
        except FileNotFoundError as exc:
            what = f"{directory} is not a complete snapshot (no {SNAPSHOT_MANIFEST})"
            raise HypervisorError(what, step="restore") from exc
        except ValueError as exc:
            raise HypervisorError(f"{path}: {exc}", step="restore") from exc
        if hypervisor is not None and manifest.hypervisor != hypervisor:
            what = f"{directory} is a {manifest.hypervisor} snapshot, not a {hypervisor} one"
            raise HypervisorError(what, step="restore")
        return manifest


def check_socket_path(path: Path) -> Path:
    """Refuse up front a socket path the kernel would truncate or reject."""
    if len(str(path).encode()) > UNIX_PATH_MAX:
        raise HypervisorError(
            f"socket path {str(path)!r} is {len(str(path).encode())} bytes; AF_UNIX allows at most "
            f"{UNIX_PATH_MAX}: use a shorter state directory",
            step="socket path",
        )
    return path


def connect_unix(path: str, vm_id: str, alive: Callable[[], bool], timeout: float) -> socket.socket:
    """Connect to a unix socket a VM serves, retrying until ``timeout`` while the VM lives."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            if not alive():
                raise VMGone(f"VM {vm_id} is not running", step="connect") from exc
            if time.monotonic() >= deadline:
                detail = f"cannot reach the guest agent at {path}: {exc}"
                raise HypervisorError(detail, step="connect") from exc
            time.sleep(0.01)
