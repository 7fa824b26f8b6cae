"""The parts of Cloud Hypervisor's ``VmConfig`` this driver sends, as pydantic models.

Field names and types follow ``components.schemas`` of Cloud Hypervisor's OpenAPI document.
The spec has no nullable field, so unset fields must be absent from the JSON, never ``null``:
:meth:`ApiBody.body` drops every ``None``. Only the fields the driver uses are modelled;
``extra="forbid"`` keeps a typo from turning into a silently ignored field (the server
ignores unknown fields).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ConsoleMode = Literal["Off", "Pty", "Tty", "File", "Socket", "Null"]
ImageType = Literal["FixedVhd", "Qcow2", "Raw", "Vhdx", "Unknown"]


class ApiBody(BaseModel):
    """A request body: serialised without the unset fields."""

    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class PayloadConfig(ApiBody):
    kernel: str | None = None
    cmdline: str | None = None
    initramfs: str | None = None
    firmware: str | None = None


class CpusConfig(ApiBody):
    boot_vcpus: int = Field(ge=1)
    max_vcpus: int = Field(ge=1)

    @model_validator(mode="after")
    def _boot_within_max(self) -> CpusConfig:
        if self.boot_vcpus > self.max_vcpus:
            raise ValueError(f"boot_vcpus {self.boot_vcpus} exceeds max_vcpus {self.max_vcpus}")
        return self


class MemoryConfig(ApiBody):
    #: Guest RAM in bytes.
    size: int = Field(ge=1)
    shared: bool | None = None


class VmRemoveDevice(ApiBody):
    id: str


class VmSnapshotConfig(ApiBody):
    #: ``file://<directory>``: the VMM writes config.json, state.json and memory-ranges there.
    destination_url: str


#: ``OnDemand`` (userfaultfd, v52+) maps guest memory lazily instead of copying it all first.
MemoryRestoreMode = Literal["Copy", "OnDemand"]


class RestoreConfig(ApiBody):
    source_url: str
    prefault: bool | None = None
    #: v52+ only; an older VMM ignores unknown fields, so it is never sent to one.
    memory_restore_mode: MemoryRestoreMode | None = None
    #: v52+ only: resume the restored VM at once (older ones need ``vm.resume``).
    resume: bool | None = None


class DiskConfig(ApiBody):
    path: str
    readonly: bool | None = None
    direct: bool | None = None
    id: str | None = None
    serial: str | None = None
    image_type: ImageType | None = None
    num_queues: int | None = Field(default=None, ge=1)
    queue_size: int | None = Field(default=None, ge=1)


class VsockConfig(ApiBody):
    #: Guest context id; 0-2 are reserved (the spec's minimum is 3).
    cid: int = Field(ge=3)
    #: Host unix socket the VMM binds at boot (hybrid vsock).
    socket: str
    id: str | None = None


class SerialConfig(ApiBody):
    mode: ConsoleMode
    file: str | None = None
    socket: str | None = None


class ConsoleConfig(SerialConfig):
    """The virtio console: the serial port's fields (the spec's further ones, IOMMU and PCI
    placement, are never sent)."""


class NetConfig(ApiBody):
    """A virtio-net device on an existing tap: named by ``tap`` at boot, or, hot-plugged with
    ``vm.add-net``, given as a descriptor passed with the request (then ``tap`` is left out).

    ``ip`` and ``mask`` are the *host* side's address, which Cloud Hypervisor puts on the tap;
    a tap that is a port of the node's bridge must have none, so they are never sent. The
    guest's own address reaches it on the kernel command line, or through its agent.
    """

    tap: str | None = None
    mac: str | None = None
    id: str | None = None
    num_queues: int | None = Field(default=None, ge=2)
    queue_size: int | None = Field(default=None, ge=1)


class RngConfig(ApiBody):
    src: str


class VmConfig(ApiBody):
    payload: PayloadConfig
    cpus: CpusConfig | None = None
    memory: MemoryConfig | None = None
    disks: list[DiskConfig] | None = None
    net: list[NetConfig] | None = None
    vsock: VsockConfig | None = None
    serial: SerialConfig | None = None
    console: ConsoleConfig | None = None
    rng: RngConfig | None = None
