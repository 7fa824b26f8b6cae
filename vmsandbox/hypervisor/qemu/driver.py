"""The QEMU driver: boots the guest image with ``qemu-system-x86_64`` and drives it over QMP.

For hosts without usable KVM (TCG emulation) and for CI. Each VM is a QEMU process plus an
agent mux proxy (:mod:`vmsandbox.hypervisor.qemu.mux`), each in a session of its own and both in
the VM's cgroup (:mod:`vmsandbox.hypervisor.detached`): neither is a child of the caller. The guest agent
is reached over a virtio-serial port, since these hosts have no ``vhost-vsock``; the proxy turns
that one byte stream into one channel per connection on ``<state>/agent.sock``.

Every method works from a fresh driver given only the persisted :class:`VMHandle`: the runtime
CLI that booted a VM has long exited when another one stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, overload

from pydantic import BaseModel

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.protocol import Ping, Pong, Reply, recv_reply, send_frame
from vmsandbox.hypervisor.base import (
    CGROUP_ENDPOINT,
    GUEST_AGENT_SERIAL_NAME,
    SERIAL_LOG_ENDPOINT,
    BootTimings,
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    HypervisorName,
    SnapshotManifest,
    VMGone,
    VMHandle,
    VMSpec,
    check_socket_path,
    connect_unix,
)
from vmsandbox.hypervisor.cgroups import procs_files
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.detached import Detached, kill_session, spawn_detached, waiter_gone
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.hypervisor.procs import running
from vmsandbox.hypervisor.qemu import migration, nic
from vmsandbox.hypervisor.qemu.firmware import firmware_for
from vmsandbox.hypervisor.qemu.probe import Accel, choose_accel
from vmsandbox.hypervisor.qemu.qmp import QMPClient, QMPError, remove_device
from vmsandbox.hypervisor.qemu.tapfd import TAP_FD
from vmsandbox.hypervisor.snapfiles import disks_for_restore, keep_disks, snapshot_dir
from vmsandbox.hypervisor.taps import open_tap
from vmsandbox.hypervisor.vmmuser import RunsAsVmmUser, VmmUser, give_access

ROOT_SERIAL = "vmsb-root"
#: Fixed part of the guest kernel command line; ``VMSpec.kernel_args`` follow it. The crypto API's
#: self-tests of every algorithm it registers and boot-time RCU grace periods at their normal pace
#: cost an emulated boot about a quarter of a second before init (bench/vm_boot.py); the guest's
#: kernel is Debian's, its algorithms tested where it was built. Two of its initcalls are skipped
#: (:data:`SKIPPED_INITCALLS`).
BASE_CMDLINE = "console=ttyS0 panic=-1 quiet cryptomgr.notests rcupdate.rcu_expedited=1"
#: Initcalls the guest needs nothing of, 0.1-0.25 s of an emulated boot by ``initcall_debug``'s
#: clock (kernel to init 2150 -> 2020 ms, medians of 20 alternating TCG boots; smaller sets were
#: within this machine's noise): Linux 6.1 self-tests its SP800-108 KDF at boot even with
#: ``cryptomgr.notests`` (the KDF works without it), and sets up the kprobe trace events no guest
#: uses. The Cloud Hypervisor driver's line stays as it is: these costs were measured under
#: emulation, and its guests run under KVM.
SKIPPED_INITCALLS = ("crypto_kdf108_init", "init_kprobe_trace")
#: Printed by the guest image's init as soon as the kernel has handed over to it.
INIT_MARKER = b"vmsandbox-init: stage=init"
READY_MARKER = b"vmsandbox-guest: ready"
#: Empty PCIe root ports for hot-plugged disks (q35's root bus itself cannot hot-plug).
HOTPLUG_PORTS = 8
#: How long the guest may take to eject a hot-plugged disk after ``device_del``.
DETACH_TIMEOUT = 30.0
QMP_TIMEOUT = 10.0
#: Seconds for the guest kernel to hand over to init; TCG on a busy host is slow.
KERNEL_BOOT_TIMEOUT = {"kvm": 30.0, "tcg": 180.0}
#: Seconds the guest gets to act on an ACPI power-button press before QEMU is told to quit.
POWERDOWN_GRACE = 0.5
QUIT_GRACE = 3.0
#: Seconds to write or read a snapshot's memory image (TCG on a busy host is slow).
SNAPSHOT_TIMEOUT = 300.0


class StateFile:
    """One named file in a VM's state directory, read as an attribute of :class:`VMPaths`."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, paths: None, owner: type) -> StateFile: ...

    @overload
    def __get__(self, paths: VMPaths, owner: type) -> Path: ...

    def __get__(self, paths: VMPaths | None, owner: type) -> Path | StateFile:
        return self if paths is None else paths.state_dir / self.name


class VMPaths(BaseModel):
    """Where one VM's sockets and logs live inside its state directory."""

    state_dir: Path

    qmp: ClassVar[StateFile] = StateFile("qmp.sock")
    agent: ClassVar[StateFile] = StateFile("agent.sock")
    agent_serial: ClassVar[StateFile] = StateFile("agent-serial.sock")
    console: ClassVar[StateFile] = StateFile("console.log")
    qemu_log: ClassVar[StateFile] = StateFile("qemu.log")
    mux_log: ClassVar[StateFile] = StateFile("mux.log")
    #: The VMSpec the VM was booted from: a snapshot's manifest is built from it.
    spec: ClassVar[StateFile] = StateFile("vmspec.json")
    #: Disks hot-plugged since boot, by serial, with their root port (a restore replugs them).
    hotplugged: ClassVar[StateFile] = StateFile("hotplug.json")

    def sockets(self) -> list[Path]:
        return [self.qmp, self.agent, self.agent.with_name(self.agent.name + ".tmp"), self.agent_serial]


#: QEMU's seccomp filter: no obsolete syscalls, no setuid/setgid, no fork/exec, no
#: scheduling/affinity changes. A guest that escapes into QEMU gains none of those.
SECCOMP_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def hotplug_argv(disks: list[DiskSpec], ports: dict[str, str]) -> list[str]:
    """Disks that were hot-plugged into the source VM, on the command line of a restored one:
    the same device on the same root port, so the migrated device state finds them."""
    argv: list[str] = []
    for disk in disks:
        node = f"hp-{disk.serial}"
        argv += ["-blockdev", _blockdev(node, disk.path, "on" if disk.readonly else "off")]
        device = f"virtio-blk-pci,drive={node},serial={disk.serial},id=blk-{disk.serial}"
        argv += ["-device", f"{device},bus={ports[disk.serial]}"]
    return argv


def qemu_argv(binary: str, spec: VMSpec, accel: Accel, paths: VMPaths, firmware: str = "") -> list[str]:
    """The full QEMU command line for ``spec`` (also what the boot benchmark runs bare); ``firmware``
    is a ``-bios`` file (see firmware.py), "" for QEMU's default."""
    if spec.kernel is None or spec.initramfs is None or spec.root_disk is None:
        raise HypervisorError("VMSpec.kernel, initramfs and root_disk are required", step="boot config")
    skipped = f"initcall_blacklist={','.join(SKIPPED_INITCALLS)}"
    cmdline = " ".join([BASE_CMDLINE, skipped, *spec.kernel_args])
    argv = [binary, "-machine", "q35", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max"]
    argv += ["-m", str(spec.memory_mib), "-smp", str(spec.vcpus), "-name", spec.vm_id]
    if firmware:
        argv += ["-bios", firmware]
    argv += ["-kernel", str(spec.kernel), "-initrd", str(spec.initramfs), "-append", cmdline]
    argv += ["-display", "none", "-nodefaults", "-no-user-config", "-no-reboot"]
    argv += ["-sandbox", SECCOMP_SANDBOX]
    # Append mode, so the relay can rotate the console log by copy-and-truncate.
    argv += ["-chardev", f"file,id=console,path={paths.console},append=on", "-serial", "chardev:console"]
    argv += ["-qmp", f"unix:{paths.qmp},server=on,wait=off"]
    argv += ["-device", "virtio-rng-pci"]
    argv += ["-device", "virtio-serial-pci,id=vser"]
    argv += ["-chardev", f"socket,id=agent,path={paths.agent_serial},server=on,wait=off"]
    argv += ["-device", f"virtserialport,bus=vser.0,chardev=agent,name={GUEST_AGENT_SERIAL_NAME}"]
    disks = [DiskSpec(path=spec.root_disk, serial=ROOT_SERIAL, readonly=True), *spec.disks]
    for index, disk in enumerate(disks):
        readonly = "on" if disk.readonly else "off"
        argv += ["-blockdev", _blockdev(f"disk{index}", disk.path, readonly)]
        argv += ["-device", f"virtio-blk-pci,drive=disk{index},serial={disk.serial},id=blk-{disk.serial}"]
    argv += _nic(spec)
    for port in range(HOTPLUG_PORTS):
        argv += ["-device", f"pcie-root-port,id=hp{port},chassis={port + 1},slot={port + 1}"]
    net = spec.network
    if net is not None and net.tap is not None and net.tap_netns is not None:
        # QEMU opens the tap by name in its own namespace: start it where the tap is (nsenter
        # execs it, so the pid is QEMU's; its sockets are paths, which no namespace changes).
        argv = ["nsenter", f"--net={net.tap_netns}", *argv]
    return argv


def as_vmm_user(argv: list[str], binary: str, user: VmmUser) -> list[str]:
    """``argv`` started as ``user``: ``setpriv`` after any ``nsenter`` (only root may enter a
    namespace), and a tap opened as root and handed over as fd 3 (see tapfd.py)."""
    at = argv.index(binary)
    prefix, qemu = argv[:at], argv[at:]
    for index, value in enumerate(qemu):
        if value.startswith("tap,id=net0,ifname="):
            tap = value.split(",")[2].removeprefix("ifname=")
            qemu[index] = f"tap,id=net0,fd={TAP_FD}"
            prefix += [sys.executable, "-I", str(Path(__file__).with_name("tapfd.py")), tap]
    return [*prefix, *user.prefix(), *qemu]


def _hotplug_table(handle: VMHandle) -> dict[str, dict[str, object]]:
    path = VMPaths(state_dir=handle.state_dir).hotplugged
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _save_hotplug_table(handle: VMHandle, table: dict[str, dict[str, object]]) -> None:
    path = VMPaths(state_dir=handle.state_dir).hotplugged
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    tmp.replace(path)


def _ping(agent: Path, timeout: float) -> Reply:
    """One ping through the mux proxy's socket; the guest agent's reply (a Pong when it is up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(agent))
        send_frame(sock, Ping())
        return recv_reply(sock)


def _nic(spec: VMSpec) -> list[str]:
    """The sandbox's NIC: the node's prepared tap, opened by name, as virtio-net."""
    net = spec.network
    if net is None or net.tap is None:
        return []
    netdev = f"tap,id=net0,ifname={net.tap},script=no,downscript=no"
    return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,mac={net.mac},id=nic0"]


def _blockdev(node: str, path: Path, readonly: str) -> str:
    file = str(path).replace(",", ",,")
    return f"driver=raw,node-name={node},read-only={readonly},file.driver=file,file.filename={file}"


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_bytes().decode(errors="replace")
    except OSError:
        return "(none)"
    kept = [line.rstrip("\r") for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(empty)"


class QemuDriver(HypervisorDriver, RunsAsVmmUser):
    """Boots the guest image under QEMU (KVM when a boot probe proves it works, else TCG)."""

    name: ClassVar[HypervisorName] = "qemu"
    shares_host_fs: ClassVar[bool] = False

    def __init__(self, config: HypervisorConfig) -> None:
        self.config = config

    def _give_access(self, spec: VMSpec, disks: list[DiskSpec]) -> None:
        files = [(Path(p), True) for p in (spec.kernel, spec.initramfs, spec.root_disk) if p is not None]
        give_access(self.user, spec.state_dir, [*files, *((d.path, d.readonly) for d in disks)])

    # -- boot -----------------------------------------------------------------------------------

    def boot(self, spec: VMSpec) -> VMHandle:
        for field in ("kernel", "initramfs", "root_disk"):
            value = getattr(spec, field)
            if value is None:
                raise HypervisorError(f"VMSpec.{field} is required by the qemu backend", step="boot config")
            if not Path(value).is_file():
                raise HypervisorError(f"VMSpec.{field}: {value} is not a file", step="boot config")
        for disk in spec.disks:
            if not disk.path.is_file():
                raise HypervisorError(
                    f"VMSpec.disks[{disk.serial}]: {disk.path} is not a file", step="boot config"
                )
        paths = VMPaths(state_dir=spec.state_dir)
        for sock in paths.sockets():
            check_socket_path(sock)
        _ = self.user  # a missing VMM user is refused before anything is made
        assert spec.kernel is not None
        accel = choose_accel(self.config, spec.kernel)
        if accel == "kvm" and (user := self.user) is not None:
            user.check_kvm()
        firmware = firmware_for(self.config.qemu_firmware)
        argv = qemu_argv(self.config.qemu_binary, spec, accel, paths, firmware)
        created = not spec.state_dir.exists()
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*paths.sockets(), paths.console]:
            stale.unlink(missing_ok=True)
        try:
            self._give_access(spec, spec.disks)
        except HypervisorError:
            if created:
                shutil.rmtree(spec.state_dir, ignore_errors=True)
            raise

        t0 = time.monotonic()
        handle = VMHandle(vm_id=spec.vm_id, hypervisor=self.name, state_dir=spec.state_dir, vmm_pid=0)
        with self._torn_down_on_failure(handle):
            qemu, mux = self._start(handle, argv, paths, spec.cgroup, {"accel": accel, "firmware": firmware})
            handle.save()  # before the long wait: a killed creator's VM can then be found and stopped
            paths.spec.write_text(spec.model_dump_json())
            self._wait_qmp(qemu, paths)
            t_vmm = time.monotonic()
            t_init, t_ready, pong = self._wait_agent(handle, qemu, mux, paths, spec.agent_timeout)
            handle.timings = BootTimings.between(t0, t_vmm, t_init, t_ready)
            handle.timings.add_guest_clock(pong)
            handle.save()
        return handle

    @contextlib.contextmanager
    def _torn_down_on_failure(self, handle: VMHandle) -> Iterator[None]:
        """A VM that fails while it comes up is killed: nothing in its guest is worth a graceful
        shutdown yet."""
        try:
            yield
        except BaseException:
            self._teardown(handle, graceful=False)
            raise

    def _start(
        self, handle: VMHandle, argv: list[str], paths: VMPaths, cgroup: str | None, extra: dict[str, str]
    ) -> tuple[Detached, Detached]:
        """Start QEMU and its agent mux (each detached, in the VM's cgroup) and record both, with
        ``extra``, in the handle's endpoints."""
        if (user := self.user) is not None:
            argv = as_vmm_user(argv, self.config.qemu_binary, user)
        qemu = self._start_qemu(argv, paths, cgroup)
        handle.vmm_pid = qemu.pid
        handle.endpoints = {
            "qmp": str(paths.qmp),
            "agent": str(paths.agent),
            "agent_serial": str(paths.agent_serial),
            SERIAL_LOG_ENDPOINT: str(paths.console),
            "vmm_started": qemu.started,
            "vmm_waiter": qemu.waiter,
            **extra,
        }
        if cgroup:
            handle.endpoints[CGROUP_ENDPOINT] = cgroup
        mux = self._start_mux(paths, cgroup)
        handle.endpoints["mux_pid"] = str(mux.pid)
        handle.endpoints["mux_started"] = mux.started
        handle.endpoints["mux_waiter"] = mux.waiter
        return qemu, mux

    @staticmethod
    def _start_qemu(argv: list[str], paths: VMPaths, cgroup: str | None) -> Detached:
        with paths.qemu_log.open("wb") as log:
            return spawn_detached(argv, log=log, cgroup_procs=procs_files(cgroup))

    @staticmethod
    def _start_mux(paths: VMPaths, cgroup: str | None) -> Detached:
        import vmsandbox

        env = dict(os.environ)
        package_root = str(Path(vmsandbox.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "vmsandbox.hypervisor.qemu.mux"]
        cmd += ["--line", str(paths.agent_serial), "--listen", str(paths.agent)]
        with paths.mux_log.open("wb") as log:
            return spawn_detached(cmd, log=log, cgroup_procs=procs_files(cgroup), env=env)

    def _wait_qmp(self, qemu: Detached, paths: VMPaths) -> None:
        deadline = time.monotonic() + QMP_TIMEOUT
        while True:
            if not qemu.alive():
                raise HypervisorError(f"QEMU exited: {_tail(paths.qemu_log)}", step="vmm start")
            try:
                with QMPClient.connect(paths.qmp, timeout=0.2) as qmp:
                    status = qmp.execute("query-status")
                if isinstance(status, dict) and status.get("status") == "running":
                    return
            except QMPError:
                pass
            if time.monotonic() >= deadline:
                raise HypervisorError(
                    f"QMP did not report a running VM within {QMP_TIMEOUT:g}s", step="vmm start"
                )
            time.sleep(0.01)

    def _wait_agent(
        self,
        handle: VMHandle,
        qemu: Detached,
        mux: Detached,
        paths: VMPaths,
        timeout: float,
    ) -> tuple[float, float, Pong]:
        """Wait for the guest agent to answer a ping: when init started, when it answered, its pong.

        ``timeout`` (``VMSpec.agent_timeout``) counts from the kernel handing over to init, as the
        spec says "after boot": under TCG on a loaded host the kernel alone can take tens of
        seconds, which says nothing about the agent. The kernel has its own deadline.
        """
        accel = handle.endpoints.get("accel", "tcg")
        kernel_timeout = KERNEL_BOOT_TIMEOUT[accel]
        kernel_deadline = time.monotonic() + kernel_timeout
        agent_deadline: float | None = None
        t_init: float | None = None
        last_error = "its socket never appeared"
        while True:
            if not qemu.alive():
                raise VMGone(
                    f"the VM exited before the guest agent was ready; console: {_tail(paths.console)}; "
                    f"QEMU: {_tail(paths.qemu_log)}",
                    step="agent ready",
                )
            if not mux.alive():
                raise HypervisorError(
                    f"the agent serial mux exited: {_tail(paths.mux_log)}", step="agent ready"
                )
            if t_init is None:
                with contextlib.suppress(OSError):
                    if INIT_MARKER in paths.console.read_bytes():
                        t_init = time.monotonic()
                        agent_deadline = t_init + timeout
            if paths.agent.exists():
                try:
                    wait = (agent_deadline or kernel_deadline) - time.monotonic()
                    reply = _ping(paths.agent, max(0.5, wait))
                    if isinstance(reply, Pong):
                        now = time.monotonic()
                        return (t_init or now), now, reply
                    last_error = f"it answered a ping with {reply.type}"
                except (OSError, ValueError, VMSandboxError) as exc:
                    last_error = f"ping failed: {exc}"
            now = time.monotonic()
            if agent_deadline is not None and now >= agent_deadline:
                raise HypervisorError(
                    f"the guest agent did not answer within {timeout:g}s of init ({last_error}); "
                    f"console: {_tail(paths.console)}",
                    step="agent ready",
                )
            if agent_deadline is None and now >= kernel_deadline:
                raise HypervisorError(
                    f"the guest kernel did not reach init ({INIT_MARKER.decode()!r} on the console) within "
                    f"{kernel_timeout:g}s under {accel}; console: {_tail(paths.console)}",
                    step="vm boot",
                )
            time.sleep(0.02)

    # -- running VMs ----------------------------------------------------------------------------

    def connect(self, handle: VMHandle, timeout: float = 10.0) -> socket.socket:
        path = handle.endpoints.get("agent", str(VMPaths(state_dir=handle.state_dir).agent))
        return connect_unix(path, handle.vm_id, lambda: self.alive(handle), timeout)

    def _qmp(self, handle: VMHandle, timeout: float = QMP_TIMEOUT) -> QMPClient:
        if not self.alive(handle):
            raise VMGone(f"VM {handle.vm_id} is not running", step="qmp")
        return QMPClient.connect(Path(handle.endpoints["qmp"]), timeout=timeout)

    def attach_disk(self, handle: VMHandle, disk: DiskSpec) -> None:
        if not disk.path.is_file():
            raise HypervisorError(f"disk {disk.serial}: {disk.path} is not a file", step="attach disk")
        user = self.user
        if user is not None:  # blockdev-add opens the file as QEMU's user
            (user.readable if disk.readonly else user.own)(disk.path)
        with self._qmp(handle) as qmp:
            port = self._free_hotplug_port(qmp)
            node = f"hp-{disk.serial}"
            qmp.execute(
                "blockdev-add",
                {
                    "driver": "raw",
                    "node-name": node,
                    "read-only": disk.readonly,
                    "file": {"driver": "file", "filename": str(disk.path)},
                },
            )
            try:
                qmp.execute(
                    "device_add",
                    {
                        "driver": "virtio-blk-pci",
                        "drive": node,
                        "serial": disk.serial,
                        "id": f"blk-{disk.serial}",
                        "bus": port,
                    },
                )
            except QMPError:
                with contextlib.suppress(QMPError):
                    qmp.execute("blockdev-del", {"node-name": node})
                raise
        table = _hotplug_table(handle)
        table[disk.serial] = {"path": str(disk.path), "readonly": disk.readonly, "bus": port}
        _save_hotplug_table(handle, table)

    def detach_disk(self, handle: VMHandle, serial: str) -> None:
        """The device removed once the guest has ejected it (:func:`remove_device`), then
        ``blockdev-del``: its drive stays taken until then."""
        with self._qmp(handle) as qmp:
            remove_device(qmp, f"blk-{serial}", DETACH_TIMEOUT, f"disk {serial}", "detach disk")
            self._delete_block_node(qmp, f"hp-{serial}", serial)
        table = _hotplug_table(handle)
        if table.pop(serial, None) is not None:
            _save_hotplug_table(handle, table)

    def attach_nic(self, handle: VMHandle, network: NetworkAttachment) -> None:
        """The tap, opened here (as root, in its namespace), passed to QEMU with ``getfd``; then
        ``netdev_add`` and ``device_add`` on a free hot-plug port (see nic.py)."""
        if network.mac is None:
            raise HypervisorError("the network attachment has no MAC", step="attach nic")
        fd = open_tap(network)
        try:
            with self._qmp(handle) as qmp:
                nic.plug(qmp, fd, network.mac, self._free_hotplug_port(qmp))
        except QMPError as exc:
            raise HypervisorError(f"tap {network.tap}: {exc.detail}", step="attach nic") from exc
        finally:
            os.close(fd)  # QEMU holds its own copy from here on

    def detach_nic(self, handle: VMHandle) -> None:
        with self._qmp(handle) as qmp:
            nic.unplug(qmp, DETACH_TIMEOUT)

    @staticmethod
    def _delete_block_node(qmp: QMPClient, node: str, serial: str) -> None:
        """``blockdev-del``, retried while the finalized device still holds the node (QEMU
        releases a drive shortly after the device leaves the tree, without an event we wait on)."""
        deadline = time.monotonic() + DETACH_TIMEOUT
        while node in {n.get("node-name") for n in qmp.execute("query-named-block-nodes")}:
            try:
                qmp.execute("blockdev-del", {"node-name": node})
                return
            except QMPError as exc:
                if time.monotonic() >= deadline:
                    raise HypervisorError(f"disk {serial}: {exc}", step="detach disk") from exc
                time.sleep(0.05)

    @staticmethod
    def _free_hotplug_port(qmp: QMPClient) -> str:
        """The first hot-plug root port with nothing behind it (asked of QEMU: no local state)."""
        used = set()
        for bus in qmp.execute("query-pci"):
            for device in bus.get("devices", []):
                bridge = device.get("pci_bridge")
                if device.get("qdev_id", "").startswith("hp") and bridge and bridge.get("devices"):
                    used.add(device["qdev_id"])
        for port in range(HOTPLUG_PORTS):
            if f"hp{port}" not in used:
                return f"hp{port}"
        raise HypervisorError(f"all {HOTPLUG_PORTS} hot-plug slots are in use", step="hot-plug")

    def alive(self, handle: VMHandle) -> bool:
        return handle.vmm_pid > 0 and running(handle.vmm_pid, handle.endpoints.get("vmm_started") or None)

    def stop(self, handle: VMHandle) -> None:
        self._teardown(handle, graceful=True)

    # -- pause, snapshot, restore ---------------------------------------------------------------

    def pause(self, handle: VMHandle) -> None:
        """QMP ``stop``: the vCPUs halt; QEMU, its sockets and the mux proxy keep running."""
        with self._qmp(handle) as qmp:
            qmp.execute("stop")

    def resume(self, handle: VMHandle) -> None:
        with self._qmp(handle) as qmp:
            qmp.execute("cont")

    def paused(self, handle: VMHandle) -> bool:
        with self._qmp(handle) as qmp:
            return not qmp.execute("query-status").get("running", False)

    def snapshot(self, handle: VMHandle, directory: Path) -> SnapshotManifest:
        paths = VMPaths(state_dir=handle.state_dir)
        with snapshot_dir(directory) as target:
            spec = VMSpec.model_validate_json(paths.spec.read_text())
            hotplugged = _hotplug_table(handle)
            with self._qmp(handle, timeout=QMP_TIMEOUT) as qmp:
                qmp.execute("stop")
                mapped = migration.enable_mapped_ram(qmp)
                migration.save(qmp, target / migration.MEMORY_FILE, SNAPSHOT_TIMEOUT)
            plugged = [
                DiskSpec(path=Path(str(v["path"])), serial=serial, readonly=bool(v["readonly"]))
                for serial, v in hotplugged.items()
            ]
            details = {"accel": handle.endpoints.get("accel", "tcg"), "mapped_ram": str(mapped).lower()}
            details["firmware"] = handle.endpoints.get("firmware", "")
            details |= {f"bus.{serial}": str(v["bus"]) for serial, v in hotplugged.items()}
            details["boot_disks"] = ",".join(d.serial for d in spec.disks)
            manifest = SnapshotManifest(
                hypervisor=self.name,
                source_vm_id=handle.vm_id,
                vcpus=spec.vcpus,
                memory_mib=spec.memory_mib,
                kernel=spec.kernel,
                initramfs=spec.initramfs,
                root_disk=spec.root_disk,
                disks=keep_disks([*spec.disks, *plugged], target),
                details=details,
            )
            manifest.save(target)
        return manifest

    def restore(self, spec: VMSpec, directory: Path) -> VMHandle:
        directory = directory.absolute()
        manifest = SnapshotManifest.load(directory, self.name)
        paths = VMPaths(state_dir=spec.state_dir)
        for sock in paths.sockets():
            check_socket_path(sock)
        _ = self.user  # a missing VMM user is refused before anything is made
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        handle = VMHandle(vm_id=spec.vm_id, hypervisor=self.name, state_dir=spec.state_dir, vmm_pid=0)
        t0 = time.monotonic()
        with self._torn_down_on_failure(handle):
            disks = disks_for_restore(manifest, directory, spec.state_dir)
            boot_serials = manifest.details.get("boot_disks", "").split(",")
            machine = spec.model_copy(
                update={
                    "vcpus": manifest.vcpus,
                    "memory_mib": manifest.memory_mib,
                    "kernel": manifest.kernel,
                    "initramfs": manifest.initramfs,
                    "root_disk": manifest.root_disk,
                    "disks": [d for d in disks if d.serial in boot_serials],
                }
            )
            plugged = [d for d in disks if d.serial not in boot_serials]
            ports = {d.serial: manifest.details[f"bus.{d.serial}"] for d in plugged}
            accel: Accel = "kvm" if manifest.details.get("accel") == "kvm" else "tcg"
            # The firmware's image is part of the machine's memory: the one the snapshot ran.
            firmware = firmware_for(manifest.details.get("firmware", ""))
            argv = qemu_argv(self.config.qemu_binary, machine, accel, paths, firmware)
            argv += [*hotplug_argv(plugged, ports), "-incoming", "defer"]
            self._give_access(machine, disks)
            extra = {"accel": accel, "firmware": firmware, "restored_from": str(directory)}
            qemu, mux = self._start(handle, argv, paths, spec.cgroup, extra)
            handle.save()
            paths.spec.write_text(machine.model_dump_json())
            _save_hotplug_table(
                handle,
                {
                    d.serial: {"path": str(d.path), "readonly": d.readonly, "bus": ports[d.serial]}
                    for d in plugged
                },
            )
            with QMPClient.connect(paths.qmp, timeout=QMP_TIMEOUT) as qmp:
                t_vmm = time.monotonic()
                if manifest.details.get("mapped_ram") == "true":
                    migration.enable_mapped_ram(qmp)
                migration.load(qmp, directory / migration.MEMORY_FILE)
                migration.wait_loaded(qmp, SNAPSHOT_TIMEOUT)
            t_loaded = time.monotonic()
            self._wait_agent_socket(qemu, mux, paths, spec.agent_timeout)
            handle.timings = BootTimings.between(t0, t_vmm, t_loaded, time.monotonic())
            handle.save()
        return handle

    def _wait_agent_socket(
        self,
        qemu: Detached,
        mux: Detached,
        paths: VMPaths,
        timeout: float,
    ) -> None:
        """After a restore: the guest agent is already listening; wait for the new mux proxy to
        reach it over the new line, then for one ping to go through."""
        deadline = time.monotonic() + timeout
        last_error = "the mux proxy never bound its socket"
        while True:
            for proc, what in ((qemu, "QEMU"), (mux, "the agent serial mux")):
                if proc.poll() is not None:
                    raise VMGone(
                        f"{what} exited (status {proc.returncode}) after the restore; "
                        f"log: {_tail(paths.qemu_log if proc is qemu else paths.mux_log)}",
                        step="agent ready",
                    )
            if paths.agent.exists():
                try:
                    if isinstance(_ping(paths.agent, max(0.5, deadline - time.monotonic())), Pong):
                        return
                    last_error = "the agent did not answer a ping with a pong"
                except (OSError, ValueError, VMSandboxError) as exc:
                    last_error = f"ping failed: {exc}"
            if time.monotonic() >= deadline:
                raise HypervisorError(
                    f"the restored guest agent did not answer within {timeout:g}s ({last_error})",
                    step="agent ready",
                )
            time.sleep(0.02)

    def _teardown(self, handle: VMHandle, *, graceful: bool) -> None:
        if handle.vmm_pid > 0:
            if graceful and self.alive(handle):
                self._shut_down(handle)
            self._kill_group(handle)
        paths = VMPaths(state_dir=handle.state_dir)
        for sock in paths.sockets():
            sock.unlink(missing_ok=True)
        shutil.rmtree(handle.state_dir, ignore_errors=True)

    def _shut_down(self, handle: VMHandle) -> None:
        """Power button first (a guest may flush), then QMP quit; SIGKILL follows regardless."""
        try:
            with self._qmp(handle, timeout=2.0) as qmp:
                qmp.execute("system_powerdown")
                if self._wait_gone(handle, POWERDOWN_GRACE):
                    return
                qmp.execute("quit")
        except HypervisorError:
            pass
        self._wait_gone(handle, QUIT_GRACE)

    def _wait_gone(self, handle: VMHandle, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.alive(handle):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    @staticmethod
    def _kill_group(handle: VMHandle) -> None:
        """SIGKILL QEMU and the mux, each in a session of its own with its waiter; wait for all."""
        members = [("vmm", handle.vmm_pid)]
        if "mux_pid" in handle.endpoints:
            members.append(("mux", int(handle.endpoints["mux_pid"])))
        for name, pid in members:
            if pid > 0:  # start times are checked: a reused pid is never signalled
                kill_session(
                    pid, handle.endpoints.get(f"{name}_started"), handle.endpoints.get(f"{name}_waiter")
                )
        deadline = time.monotonic() + 10
        for name, pid in members:
            started = handle.endpoints.get(f"{name}_started")
            while running(pid, started or None) and time.monotonic() < deadline:
                time.sleep(0.01)
            gone = waiter_gone(handle.endpoints.get(f"{name}_waiter"), max(0.0, deadline - time.monotonic()))
            if running(pid, started or None) or not gone:
                raise HypervisorError(f"process {pid} of VM {handle.vm_id} survived SIGKILL", step="stop")
