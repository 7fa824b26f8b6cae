"""The stand-in VMM's state machine: one config slot and at most one booted VM.

Behaviour follows the real server (``vmm/src/lib.rs`` and ``vmm/src/api/http``), not its
OpenAPI document, where the two differ:

* ``vm.create`` only stores the config (500 when one exists); validation happens at ``vm.boot``.
* ``vm.boot`` checks the payload, the kernel image, the initramfs, the disks, the serial file,
  and binds the vsock socket, then "starts the guest".
* ``vm.shutdown`` drops the VM but keeps the config (``vm.info`` says Created again);
  ``vm.delete`` is always 204; ``vmm.shutdown`` answers 200 with an empty body and the
  process exits; a guest that powers off ends the VMM too.
* Wrong-state errors are 500, never the 405 the spec documents; "not created" is 404 from v53,
  500 before. ``vm.add-disk`` cold-adds before boot (204) and hot-plugs after (200 with
  ``PciDeviceInfo``), with auto ids from one global counter. ``vm.add-net`` does the same for a
  NIC, on the tap descriptors sent with the request (SCM_RIGHTS; kept until the device goes)
  or else on a tap named in the body; ``vm.remove-device`` removes disks and NICs.
* Error bodies are JSON arrays of strings, top of the chain first. The status codes and the
  array shape are exact; the words of each chain are close to, not copies of, the real ones.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from standin import openapi
from standin.guest import EchoGuest, Guest, SilentGuest
from standin.hybrid_vsock import HybridVsock
from standin.kernel_image import KernelRejected, check_kernel
from standin.knobs import Knobs

GET_ROUTES = {"/vmm.ping", "/vm.info", "/vm.counters"}
NO_BODY_ROUTES = {
    "/vmm.shutdown",
    "/vm.boot",
    "/vm.delete",
    "/vm.pause",
    "/vm.resume",
    "/vm.shutdown",
    "/vm.reboot",
    "/vm.power-button",
    "/vm.nmi",
}
BODY_ROUTES = {
    "/vm.create",
    "/vm.resize",
    "/vm.resize-disk",
    "/vm.resize-zone",
    "/vm.add-device",
    "/vm.add-user-device",
    "/vm.add-disk",
    "/vm.add-fs",
    "/vm.add-generic-vhost-user",
    "/vm.add-net",
    "/vm.add-pmem",
    "/vm.add-vdpa",
    "/vm.add-vsock",
    "/vm.remove-device",
    "/vm.snapshot",
    "/vm.restore",
    "/vm.receive-migration",
    "/vm.send-migration",
}
API_ROOT = "/api/v1"
DEFAULT_MEMORY = 512 * 1024 * 1024


@dataclass
class Reply:
    status: int
    #: None: no body and no Content-Length (micro_http's 204); b"": ``Content-Length: 0``.
    body: bytes | None = None
    exit_after: bool = False


class ApiFailure(Exception):
    def __init__(self, status: int, messages: list[str]) -> None:
        super().__init__(": ".join(messages))
        self.status = status
        self.messages = messages


def error_reply(status: int, messages: list[str]) -> Reply:
    return Reply(status, json.dumps(messages).encode())


def json_reply(value: Any) -> Reply:
    return Reply(200, json.dumps(value).encode())


def log(message: str) -> None:
    print(f"cloud-hypervisor stand-in: {message}", file=sys.stderr, flush=True)


@dataclass
class BootedVm:
    guest: Guest
    vsock: HybridVsock | None
    state: str = "Running"


class StandinVmm:
    def __init__(self, knobs: Knobs, spec_path: Path | None, on_exit: Callable[[str], None]) -> None:
        self.knobs = knobs
        self._spec_path = spec_path
        self._spec: dict[str, Any] | None = None
        self.on_exit = on_exit
        self.config: dict[str, Any] | None = None
        self.vm: BootedVm | None = None
        self._device_counter = 0
        self._bdfs: dict[str, str] = {}
        #: The tap descriptors each NIC was added with, by device id.
        self._net_fds: dict[str, list[int]] = {}
        self._lock = threading.RLock()
        self._stopping = False

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes | None, fds: list[int] | None = None) -> Reply:
        """One request; ``fds`` came with it, and are closed unless a NIC keeps them."""
        fds = list(fds or [])
        try:
            return self._handle(method, path, body, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _handle(self, method: str, path: str, body: bytes | None, fds: list[int]) -> Reply:
        if not path.startswith(API_ROOT + "/"):
            return error_reply(404, ["Not Found"])
        route = path[len(API_ROOT) :]
        if route not in GET_ROUTES | NO_BODY_ROUTES | BODY_ROUTES:
            return error_reply(404, ["Not Found"])
        if method not in ("GET", "PUT"):
            return Reply(400)
        if (method == "GET") != (route in GET_ROUTES):
            return error_reply(400, ["Bad Request"])
        parsed: Any = None
        if route in NO_BODY_ROUTES and body is not None:
            return error_reply(400, ["Bad Request"])
        if route in BODY_ROUTES:
            if body is None:
                return Reply(400) if route == "/vm.create" else error_reply(400, ["Bad Request"])
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                return error_reply(400, ["Failed to deserialize JSON", str(exc)])
            if not isinstance(parsed, dict):
                return error_reply(400, ["Failed to deserialize JSON", "invalid type: expected a map"])
            violation = self._schema_violation(route, method, parsed)
            if violation is not None:
                return violation
        handler = getattr(self, "_api_" + route[1:].replace(".", "_").replace("-", "_"), None)
        with self._lock:
            try:
                if handler is None:
                    log(f"LOUD: {route} is a real endpoint the stand-in does not emulate")
                    raise ApiFailure(500, ["Error from API", f"the stand-in does not emulate {route}"])
                if route == "/vm.add-net":
                    return self._api_vm_add_net(parsed, fds)
                result: Reply = handler(parsed) if route in BODY_ROUTES else handler()
                return result
            except ApiFailure as failure:
                log(f"{method} {route} -> {failure.status} {failure.messages}")
                return error_reply(failure.status, failure.messages)

    def _schema_violation(self, route: str, method: str, body: dict[str, Any]) -> Reply | None:
        if self._spec_path is None:
            return None
        if self._spec is None:
            self._spec = openapi.load_spec(self._spec_path)
        name = openapi.body_schema_name(self._spec, route, method)
        if name is None:
            log(f"LOUD: the OpenAPI document names no request body for {method} {route}")
            return error_reply(500, ["stand-in: the OpenAPI document has no request body for " + route])
        problems = openapi.violations(self._spec, name, body)
        if not problems:
            return None
        log(f"LOUD: {method} {route} body does not conform to components.schemas.{name}: {problems}")
        return error_reply(
            500, [f"stand-in: request body does not conform to components.schemas.{name}", *problems]
        )

    # -- helpers ---------------------------------------------------------------------------

    def _require_config(self, action: str) -> dict[str, Any]:
        if self.config is None:
            raise ApiFailure(self.knobs.not_created_status, ["Error from API", action, "VM is not created"])
        return self.config

    def _require_booted(self, action: str) -> BootedVm:
        if self.vm is None:
            raise ApiFailure(500, ["Error from API", action, "VM is not running"])
        return self.vm

    def _next_id(self, prefix: str) -> str:
        device_id = f"_{prefix}{self._device_counter}"
        self._device_counter += 1
        return device_id

    def _assign_bdf(self, device_id: str) -> str:
        bdf = f"0000:00:{len(self._bdfs) + 1:02x}.0"
        self._bdfs[device_id] = bdf
        return bdf

    def _guest_disks(self) -> dict[str, str]:
        """The VM's disks by serial: how the guest agent finds a container's root disk."""
        disks = (self.config or {}).get("disks") or []
        return {d["serial"]: d["path"] for d in disks if d.get("serial")}

    # -- endpoints -------------------------------------------------------------------------

    def _api_vmm_ping(self) -> Reply:
        major, minor = self.knobs.version[1:].split(".")
        return json_reply(
            {
                "version": f"{major}.{minor}.0",
                "build_version": f"{self.knobs.version}-standin",
                "pid": os.getpid(),
                "features": ["kvm"],
            }
        )

    def _api_vmm_shutdown(self) -> Reply:
        self._delete()
        return Reply(200, b"", exit_after=True)

    def _api_vm_create(self, body: dict[str, Any]) -> Reply:
        if "refuse-create" in self.knobs.faults:
            raise ApiFailure(
                500,
                ["Error from API", "The VM could not be created", "injected fault refuse-create"],
            )
        if self.config is not None:
            raise ApiFailure(500, ["Error from API", "The VM could not be created", "VM is already created"])
        self.config = copy.deepcopy(body)
        return Reply(204)

    def _api_vm_info(self) -> Reply:
        config = self._require_config("The VM info is not available")
        info: dict[str, Any] = {
            "config": self._echo_config(config),
            "state": "Created" if self.vm is None else self.vm.state,
            "memory_actual_size": (config.get("memory") or {}).get("size", DEFAULT_MEMORY),
        }
        if self.vm is not None:
            info["device_tree"] = {
                device_id: {"id": device_id, "resources": [], "children": [], "pci_bdf": bdf}
                for device_id, bdf in self._bdfs.items()
            }
        elif self.knobs.emits_nulls:
            info["device_tree"] = None
        return json_reply(info)

    def _echo_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The stored config with the defaults the VMM fills in (and v52's nulls)."""
        echo = copy.deepcopy(config)
        echo.setdefault("cpus", {"boot_vcpus": 1, "max_vcpus": 1})
        echo.setdefault("memory", {"size": DEFAULT_MEMORY})
        echo.setdefault("serial", {"mode": "Null"})
        echo.setdefault("console", {"mode": "Tty"})
        echo.setdefault("rng", {"src": "/dev/urandom"})
        for disk in echo.get("disks") or []:
            disk.setdefault("readonly", False)
        if self.knobs.emits_nulls:
            payload = echo.setdefault("payload", {})
            for key in ("firmware", "kernel", "cmdline", "initramfs"):
                payload.setdefault(key, None)
            for key in ("net", "fs", "pmem", "devices", "vdpa", "numa", "balloon", "vsock", "platform"):
                echo.setdefault(key, None)
            for disk in echo.get("disks") or []:
                disk.setdefault("id", None)
                disk.setdefault("serial", None)
        return echo

    def _api_vm_boot(self) -> Reply:
        action = "The VM could not boot"
        if "crash-on-boot" in self.knobs.faults:
            log("injected fault crash-on-boot: dying of SIGSYS like a seccomp violation")
            os.kill(os.getpid(), signal.SIGSYS)
        config = self._require_config(action)
        if self.vm is not None:
            raise ApiFailure(500, ["Error from API", action, "VM is already created"])
        self._validate(config, action)
        self._start_vm(config, action)
        return Reply(204)

    def _start_vm(self, config: dict[str, Any], action: str, state: str = "Running") -> None:
        """Bind the vsock socket and start the guest (a boot, or a restore)."""
        vsock: HybridVsock | None = None
        guest = self._make_guest()
        try:
            self._assign_boot_devices(config)
            vsock_config = config.get("vsock")
            if vsock_config:
                vsock = HybridVsock(Path(vsock_config["socket"]), guest.open_stream)
                try:
                    vsock.bind()
                except OSError as exc:
                    raise ApiFailure(
                        500,
                        ["Error from API", action, "Cannot create virtio-vsock device", f"{exc.strerror}"],
                    ) from exc
            guest.set_disks(self._guest_disks())
            guest.start()
        except BaseException:
            if vsock is not None:
                vsock.close()
            guest.stop()
            self._bdfs.clear()
            raise
        self.vm = BootedVm(guest=guest, vsock=vsock, state=state)
        if state == "Paused":
            self._pause_guest(self.vm)
        threading.Thread(target=self._watch_guest, args=(self.vm,), daemon=True).start()

    def _validate(self, config: dict[str, Any], action: str) -> None:
        def fail(*words: str) -> None:
            raise ApiFailure(500, ["Error from API", action, *words])

        payload = config.get("payload") or {}
        if not payload.get("kernel") and not payload.get("firmware"):
            fail("Error validating configuration", "No bootitem provided: neither firmware nor kernel")
        if payload.get("kernel") and payload.get("firmware"):
            fail("Error validating configuration", "A kernel is not supported when a firmware is provided")
        cpus = config.get("cpus") or {}
        if cpus and cpus.get("boot_vcpus", 1) > cpus.get("max_vcpus", 1):
            fail("Error validating configuration", "Max is less than boot")
        vsock = config.get("vsock")
        if vsock and vsock.get("cid") in (0, 1, 2, 0xFFFFFFFF):
            fail("Error validating configuration", f"Invalid vsock CID: {vsock.get('cid')}")
        seen: set[str] = set()
        for disk in config.get("disks") or []:
            device_id = disk.get("id")
            if device_id is not None:
                if device_id in seen or device_id.startswith("__"):
                    fail("Error validating configuration", f"Identifier {device_id} is not unique")
                seen.add(device_id)
        try:
            check_kernel(Path(payload.get("kernel") or payload["firmware"]))
        except KernelRejected as exc:
            fail("Error booting VM", str(exc))
        if payload.get("initramfs") and not Path(payload["initramfs"]).is_file():
            fail("Error booting VM", f"Cannot open initramfs {payload['initramfs']}: No such file")
        for disk in config.get("disks") or []:
            if not disk.get("path") or not Path(disk["path"]).is_file():
                fail(
                    "Error creating VM",
                    "Cannot create virtio-blk device",
                    f"Failed to open disk image {disk.get('path')}: No such file or directory (os error 2)",
                )
        serial = config.get("serial") or {}
        if serial.get("mode") == "File":
            try:
                with open(serial.get("file") or "", "a"):
                    pass
            except OSError as exc:
                fail("Error creating VM", f"Cannot open serial file {serial.get('file')}: {exc.strerror}")

    def _assign_boot_devices(self, config: dict[str, Any]) -> None:
        self._bdfs.clear()
        for disk in config.get("disks") or []:
            if disk.get("id") is None:
                disk["id"] = self._next_id("disk")
            self._assign_bdf(disk["id"])
        for net in config.get("net") or []:
            if net.get("id") is None:
                net["id"] = self._next_id("net")
            self._assign_bdf(net["id"])
        if config.get("vsock"):
            vsock = config["vsock"]
            if vsock.get("id") is None:
                vsock["id"] = self._next_id("vsock")
            self._assign_bdf(vsock["id"])

    def _make_guest(self) -> Guest:
        if "guest-never-accepts" in self.knobs.faults:
            return SilentGuest()
        if self.knobs.guest == "echo":
            return EchoGuest()
        from standin.agent_guest import AgentGuest

        return AgentGuest()

    def _watch_guest(self, vm: BootedVm) -> None:
        """A guest that ends on its own has powered off: the real VMM then exits."""
        while self.vm is vm and not self._stopping:
            if not vm.guest.alive():
                with self._lock:
                    if self.vm is not vm or self._stopping:
                        return
                    log("the guest powered off; the VMM exits")
                    self._delete()
                self.on_exit("guest powered off")
                return
            time.sleep(0.05)

    def _api_vm_pause(self) -> Reply:
        return self._transition("The VM could not be paused", "Running", "Paused", self._pause_guest)

    def _api_vm_resume(self) -> Reply:
        return self._transition("The VM could not resume", "Paused", "Running", self._resume_guest)

    def _transition(self, action: str, source: str, target: str, move: Callable[[BootedVm], None]) -> Reply:
        """Pause or resume, allowed only from ``source`` as in the real VMM's state machine."""
        vm = self._require_booted(action)
        if vm.state != source:
            transition = f"Invalid transition from {vm.state} to {target}"
            raise ApiFailure(500, ["Error from API", action, transition])
        move(vm)
        vm.state = target
        return Reply(204)

    @staticmethod
    def _pause_guest(vm: BootedVm) -> None:
        vm.guest.pause()
        if vm.vsock is not None:
            vm.vsock.pause()

    @staticmethod
    def _resume_guest(vm: BootedVm) -> None:
        vm.guest.resume()
        if vm.vsock is not None:
            vm.vsock.resume()

    # -- snapshot and restore --------------------------------------------------------------
    #
    # The stand-in has no guest memory: a snapshot writes the config (as the real VMM does),
    # a small device state and a sparse memory file of the VM's size; a restore starts a fresh
    # guest agent from that config. State rules and status codes are the real VMM's.

    def _api_vm_snapshot(self, body: dict[str, Any]) -> Reply:
        action = "The VM could not be snapshotted"
        config = self._require_config(action)
        vm = self._require_booted(action)
        if vm.state != "Paused":
            raise ApiFailure(500, ["Error from API", action, "Snapshot error", "VM is not paused"])
        target = _file_url(body.get("destination_url"), action)
        if not target.is_dir():
            raise ApiFailure(500, ["Error from API", action, f"Cannot create snapshot in {target}"])
        (target / "config.json").write_text(json.dumps(config))
        (target / "state.json").write_text(json.dumps({"standin": {"version": self.knobs.version}}))
        with open(target / "memory-ranges", "wb") as memory:
            memory.truncate((config.get("memory") or {}).get("size", DEFAULT_MEMORY))
        return Reply(204)

    def _api_vm_restore(self, body: dict[str, Any]) -> Reply:
        action = "The VM could not be restored"
        if self.config is not None:
            raise ApiFailure(500, ["Error from API", action, "VM is already created"])
        if self.knobs.major < 52:
            unknown = sorted({"memory_restore_mode", "resume"} & set(body))
            if unknown:
                return error_reply(400, ["Failed to deserialize JSON", f"unknown field `{unknown[0]}`"])
        if body.get("memory_restore_mode") == "OnDemand" and body.get("prefault"):
            raise ApiFailure(500, ["Error from API", action, "prefault cannot be used with OnDemand"])
        source = _file_url(body.get("source_url"), action)
        try:
            config = json.loads((source / "config.json").read_text())
            json.loads((source / "state.json").read_text())
        except (OSError, ValueError) as exc:
            raise ApiFailure(500, ["Error from API", action, f"Cannot read snapshot: {exc}"]) from exc
        if not (source / "memory-ranges").is_file():
            raise ApiFailure(500, ["Error from API", action, "Cannot open memory-ranges"])
        self._validate(config, action)
        self.config = config
        try:
            self._start_vm(config, action, "Running" if body.get("resume") else "Paused")
        except BaseException:
            self.config = None
            raise
        return Reply(204)

    def _api_vm_counters(self) -> Reply:
        self._require_booted("Error getting the VM counters")
        disks = (self.config or {}).get("disks") or []
        # No block I/O happens in the stand-in: the counters exist, their values stay zero.
        return json_reply(
            {d["id"]: {"read_bytes": 0, "write_bytes": 0, "read_ops": 0, "write_ops": 0} for d in disks}
        )

    def _api_vm_shutdown(self) -> Reply:
        self._require_booted("The VM could not shut down")
        self._shutdown_vm()
        return Reply(204)

    def _shutdown_vm(self) -> None:
        vm, self.vm = self.vm, None
        if vm is None:
            return
        if vm.vsock is not None:
            vm.vsock.close()
        vm.guest.resume()
        vm.guest.stop()
        self._bdfs.clear()

    def _delete(self) -> None:
        self._shutdown_vm()
        self._close_net_fds()
        self.config = None

    def _api_vm_delete(self) -> Reply:
        self._delete()
        return Reply(204)

    def _api_vm_reboot(self) -> Reply:
        self._require_config("The VM could not reboot")
        vm = self._require_booted("The VM could not reboot")
        vm.guest.stop()
        vm.guest.start()
        vm.state = "Running"
        return Reply(204)

    def _api_vm_power_button(self) -> Reply:
        self._require_booted("The VM could not be powered off")
        self._delete()
        # The guest's ACPI poweroff makes the VMM process exit after answering.
        return Reply(204, exit_after=True)

    def _api_vm_nmi(self) -> Reply:
        self._require_booted("The NMI could not be injected")
        return Reply(204)

    def _api_vm_add_disk(self, disk: dict[str, Any]) -> Reply:
        action = "The disk could not be added to the VM"
        config = self._require_config(action)
        disks = config.setdefault("disks", [])
        if self.vm is None:
            disks.append(copy.deepcopy(disk))
            return Reply(204)
        device_id = disk.get("id")
        taken = {d.get("id") for d in disks} | set(self._bdfs)
        if device_id is not None and (device_id in taken or device_id.startswith("__")):
            raise ApiFailure(500, ["Error from API", action, f"Identifier {device_id} is not unique"])
        if not disk.get("path") or not Path(disk["path"]).is_file():
            raise ApiFailure(
                500,
                [
                    "Error from API",
                    action,
                    "Cannot create virtio-blk device",
                    f"Failed to open disk image {disk.get('path')}: No such file or directory (os error 2)",
                ],
            )
        added = copy.deepcopy(disk)
        added["id"] = device_id or self._next_id("disk")
        disks.append(added)
        bdf = self._assign_bdf(added["id"])
        assert self.vm is not None
        self.vm.guest.set_disks(self._guest_disks())
        return json_reply({"id": added["id"], "bdf": bdf})

    def _api_vm_add_net(self, net: dict[str, Any], fds: list[int]) -> Reply:
        """A NIC on the taps whose descriptors came with the request, else on the tap the body
        names (which the VMM must be able to open); cold-added before boot (204), hot-plugged
        after (200 with ``PciDeviceInfo``). The VMM keeps the descriptors until the NIC goes."""
        action = "The network device could not be added to the VM"
        config = self._require_config(action)
        nets = config.setdefault("net", [])
        device_id = net.get("id")
        taken = {d.get("id") for d in [*nets, *(config.get("disks") or [])]} | set(self._bdfs)
        if device_id is not None and (device_id in taken or device_id.startswith("__")):
            raise ApiFailure(500, ["Error from API", action, f"Identifier {device_id} is not unique"])
        if not fds and not net.get("tap"):
            raise ApiFailure(
                500,
                [
                    "Error from API",
                    action,
                    "Cannot create virtio-net device",
                    "Open tap failed: no tap given",
                ],
            )
        if not all(_is_tun(fd) for fd in fds):
            raise ApiFailure(
                500, ["Error from API", action, "Cannot create virtio-net device", "Invalid tap fd"]
            )
        added = copy.deepcopy(net)
        added["id"] = device_id or self._next_id("net")
        nets.append(added)
        self._net_fds[added["id"]] = list(fds)
        fds.clear()  # kept: the NIC's now
        if self.vm is None:
            return Reply(204)
        return json_reply({"id": added["id"], "bdf": self._assign_bdf(added["id"])})

    def _api_vm_remove_device(self, body: dict[str, Any]) -> Reply:
        """Created: dropped from the config. Booted: hot-unplugged (the real VMM ejects through
        ACPI; here the guest simply stops seeing the disk, and a NIC's taps are closed). An
        unknown id: 500, as released versions answer (their spec says 404)."""
        action = "The device could not be removed from the VM"
        config = self._require_config(action)
        device_id = body.get("id")
        found = False
        for section in ("disks", "net"):
            devices = config.get(section) or []
            kept = [d for d in devices if d.get("id") != device_id]
            found = found or len(kept) != len(devices)
            if section in config:
                config[section] = kept
        if not found:
            raise ApiFailure(500, ["Error from API", action, f"No device with id {device_id} to remove"])
        self._bdfs.pop(str(device_id), None)
        self._close_net_fds(str(device_id))
        if self.vm is not None:
            self.vm.guest.set_disks(self._guest_disks())
        return Reply(204)

    def _close_net_fds(self, device_id: str | None = None) -> None:
        """Close the taps of one NIC, or of every NIC (the config is gone)."""
        ids = list(self._net_fds) if device_id is None else [device_id]
        for key in ids:
            for fd in self._net_fds.pop(key, []):
                os.close(fd)

    # -- process exit ----------------------------------------------------------------------

    def shutdown_all(self) -> None:
        """Tear the VM down as the process exits (signal or ``vmm.shutdown``)."""
        with self._lock:
            self._stopping = True
            self._delete()


def _file_url(value: Any, action: str) -> Path:
    """The directory of a ``file://`` URL; anything else is refused as the real VMM does."""
    if not isinstance(value, str) or not value.startswith("file://"):
        raise ApiFailure(500, ["Error from API", action, f"Invalid URL {value!r}: only file:// is supported"])
    return Path(value[len("file://") :])


def _is_tun(fd: int) -> bool:
    """Whether ``fd`` is an open ``/dev/net/tun`` (character device 10:200), as a tap's is."""
    try:
        rdev = os.fstat(fd).st_rdev
    except OSError:
        return False
    return (os.major(rdev), os.minor(rdev)) == (10, 200)
