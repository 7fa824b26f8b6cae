"""Settings shared by the hypervisor drivers, read once from a file and ``VMSANDBOX_*`` variables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsandbox.config import load_settings

#: The runtime's drivers keep the plain prefix: the node agent, the image and the chart set these.
ENV_PREFIX = "VMSANDBOX_"


class HypervisorConfig(BaseModel):
    """Where the VMMs and the guest artifacts are, and how to run them."""

    model_config = ConfigDict(extra="forbid")

    cloud_hypervisor_binary: str = "cloud-hypervisor"
    #: Extra flags for cloud-hypervisor, e.g. ["-v"] (its seccomp filter is always on); in the
    #: variable, comma-separated like every list.
    cloud_hypervisor_args: list[str] = Field(default_factory=list)
    qemu_binary: str = "qemu-system-x86_64"
    #: "auto" boot-probes KVM once and falls back to TCG when it does not work.
    qemu_accel: Literal["auto", "kvm", "tcg"] = "auto"
    #: The firmware QEMU starts the kernel with: "auto" is qboot where QEMU ships it, else QEMU's
    #: default; "default" is QEMU's default (SeaBIOS); else an absolute path (hypervisor/qemu/firmware.py).
    qemu_firmware: str = "auto"
    #: Directory holding vmlinuz, initramfs.img, rootfs.img and manifest.json.
    guest_image_dir: Path = Path("/var/lib/vmsandbox/guest")
    #: Low-level OCI runtime the guest agent uses: "auto" picks crun, else runc, by trying.
    oci_runtime: Literal["auto", "crun", "runc"] = "auto"
    #: Each VM's processes run in the cgroup ``<cgroup_parent>/<container id>`` (every hierarchy),
    #: outside their starter's; empty: they stay in the starter's cgroup, unlimited.
    cgroup_parent: str = Field(default="vmsandbox.slice", pattern=r"^([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$")
    #: Memory a VM's cgroup allows beyond the guest's own: the VMM, its relay and mux.
    vmm_overhead_mib: int = Field(default=256, ge=0)
    #: The user VMMs run as: a name or ``uid:gid``; ``root``; empty: ``vmsandbox-vmm`` when that
    #: user exists, else root (see hypervisor/vmmuser.py).
    vmm_user: str = ""
    #: Process backend: idle guest agents kept started for sandboxes without a network of their
    #: own (``VMSANDBOX_PROCESS_POOL``); 0 keeps none.
    process_pool: int = Field(default=0, ge=0)
    #: Process backend: agents and relays are forked by one server per state root instead of
    #: each starting an interpreter (``VMSANDBOX_PROCESS_FORKSERVER``).
    process_forkserver: bool = True
    #: Every backend: containers' relays are forked by the state root's fork server (started by
    #: the first) instead of each starting an interpreter. For a long-lived caller, the node agent,
    #: which turns it on unless it is set; a one-shot ``vmsandbox-runtime create`` would start a
    #: server only to leave it behind (``VMSANDBOX_RELAY_FORKSERVER``).
    relay_forkserver: bool = False

    @classmethod
    def load(cls, path: Path | None = None, environ: Mapping[str, str] | None = None) -> HypervisorConfig:
        """``path`` (a YAML file) if given, then ``VMSANDBOX_<FIELD>`` variables; bad values raise
        :class:`~vmsandbox.config.ConfigError` naming each one."""
        return load_settings(cls, ENV_PREFIX, path, environ)
