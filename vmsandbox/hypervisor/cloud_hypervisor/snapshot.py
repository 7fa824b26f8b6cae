"""Cloud Hypervisor snapshots: what goes into the manifest, and the per-VM restore source.

``vm.snapshot`` writes ``config.json`` (the VmConfig), ``state.json`` (device state) and the
memory files into ``destination_url``. ``config.json`` names the source VM's own files (vsock
socket, serial log, writable disks), which a second VM must not share, so each restore gets a
source directory of its own inside the new VM's state directory: a rewritten ``config.json``
plus links to the snapshot's other files (no copy of guest memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vmsandbox.hypervisor.base import DiskSpec, HypervisorError, SnapshotManifest, VMSpec
from vmsandbox.hypervisor.cloud_hypervisor.layout import VmLayout
from vmsandbox.hypervisor.cloud_hypervisor.vmconfig import RestoreConfig
from vmsandbox.hypervisor.snapfiles import link_into

CONFIG_FILE = "config.json"
RESTORE_DIR = "restore"
MIB = 1024 * 1024
#: First release with ``memory_restore_mode`` and ``resume`` in RestoreConfig.
ON_DEMAND_SINCE = 52


def major_version(version: str) -> int:
    """``53.0.0`` or ``v53.0`` -> 53; 0 when unreadable (then nothing version-gated is used)."""
    head = version.lstrip("v").split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def restore_config(source: Path, version: str) -> RestoreConfig:
    """On v52+: on-demand memory (userfaultfd; cannot be combined with prefault) and resume in
    the same call. Before: copy the memory, and the caller sends ``vm.resume``."""
    url = f"file://{source}"
    if major_version(version) >= ON_DEMAND_SINCE:
        return RestoreConfig(source_url=url, memory_restore_mode="OnDemand", resume=True)
    return RestoreConfig(source_url=url, prefault=False)


def manifest_from_config(
    vm_id: str, config: dict[str, Any], version: str, root_serial: str, kept: list[DiskSpec]
) -> SnapshotManifest:
    payload = config.get("payload") or {}
    cpus = config.get("cpus") or {}
    root = next((d for d in config.get("disks") or [] if d.get("serial") == root_serial), None)
    return SnapshotManifest(
        hypervisor="cloud-hypervisor",
        source_vm_id=vm_id,
        vcpus=int(cpus.get("boot_vcpus", 1)),
        memory_mib=int((config.get("memory") or {}).get("size", 512 * MIB)) // MIB,
        kernel=payload.get("kernel"),
        initramfs=payload.get("initramfs"),
        root_disk=None if root is None else root["path"],
        disks=kept,
        details={"version": version},
    )


def vm_disks(config: dict[str, Any], root_serial: str) -> list[DiskSpec]:
    """The VM's disks besides the root image, as the VMM reports them (hot-plugged included)."""
    return [
        DiskSpec(path=Path(d["path"]), serial=d.get("serial") or d["id"], readonly=bool(d.get("readonly")))
        for d in config.get("disks") or []
        if d.get("serial") != root_serial
    ]


def prepare_source(snapshot: Path, layout: VmLayout, spec: VMSpec, disks: list[DiskSpec]) -> Path:
    """``<state>/restore``: the snapshot's config.json pointed at this VM's files, and links to
    the rest of the snapshot. ``disks`` are the restored VM's (writable ones already copied)."""
    try:
        config = json.loads((snapshot / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise HypervisorError(f"{snapshot / CONFIG_FILE}: {exc}", step="restore") from exc
    by_serial = {d.serial: d for d in disks}
    for disk in config.get("disks") or []:
        mine = by_serial.get(disk.get("serial") or "")
        if mine is not None:
            disk["path"] = str(mine.path.absolute())
    if config.get("vsock"):
        config["vsock"]["socket"] = str(layout.vsock_socket)
    if (config.get("serial") or {}).get("mode") == "File":
        config["serial"]["file"] = str(layout.serial_log)
    net = spec.network
    if config.get("net") and net is not None and net.tap is not None:
        config["net"][0]["tap"] = net.tap
    elif config.get("net"):
        config.pop("net")
    source = layout.state_dir / RESTORE_DIR
    source.mkdir()
    (source / CONFIG_FILE).write_text(json.dumps(config))
    for entry in snapshot.iterdir():
        if entry.name != CONFIG_FILE and entry.is_file() and not entry.name.startswith("disk-"):
            link_into(entry.absolute(), source / entry.name)
    return source
