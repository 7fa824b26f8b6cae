"""What the runtime reports about a container, and what it keeps on disk under ``--root``.

Layout: ``<root>/<id>/state.json`` (the :class:`Record`), ``<root>/<id>/container.log`` (output),
``<root>/<id>/relay.log``, and each pod sandbox's VM under ``<root>/.vms/<vm id>/`` (ids cannot
start with a dot, so the two never collide).
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsandbox.hypervisor.base import HypervisorName, VMHandle
from vmsandbox.hypervisor.procs import identity, identity_running
from vmsandbox.runtime.errors import IdInUse, NotFound, RuntimeError_
from vmsandbox.runtime.ids import validate_id
from vmsandbox.runtime.snapshots import SNAPSHOTS_DIR

OCI_VERSION = "1.0.2"
Status = Literal["creating", "created", "running", "paused", "stopped"]
VMS_DIR = ".vms"
#: The shared per-image root disks (dot-named like :data:`VMS_DIR`: no container id can clash).
DISKS_DIR = ".disks"
#: ``"<pid> <start time>"`` of the process that reserved the id; a dead one means an interrupted create.
CREATOR_FILE = "creator"


class Timings(BaseModel):
    """Milliseconds spent in each stage of create."""

    vmmStart: float = 0.0
    vmBoot: float = 0.0
    agentReady: float = 0.0
    containerCreate: float = 0.0
    kernelToInit: float | None = None
    initToAgentReady: float | None = None
    #: A VM taken from a pool: from create's start (config, the container's disk) to the VM
    #: taken, the disk hot-plugged and the VM's identity given.
    claim: float | None = None
    #: Set when the VM was restored from a snapshot: the restore itself (also in vmBoot).
    restore: float | None = None


class ContainerState(BaseModel):
    """The OCI state (ociVersion, id, status, pid, bundle, annotations) plus VM details."""

    ociVersion: str = OCI_VERSION
    id: str
    status: Status
    #: The host relay process: it lives while the container runs and exits with its status.
    pid: int = Field(default=0, ge=0)
    bundle: str
    annotations: dict[str, str] = Field(default_factory=dict)
    hypervisor: HypervisorName
    vm: VMHandle | None = None
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    log_path: str | None = None
    timings: Timings = Field(default_factory=Timings)


class Record(BaseModel):
    """The persisted form: the state as of the last write plus what teardown needs."""

    model_config = ConfigDict(extra="forbid")

    state: ContainerState
    #: ``member``: a VM booted ahead for a pool, with no container (vmsandbox.runtime.members).
    kind: Literal["sandbox", "container", "member"]
    sandbox_id: str
    #: True for the pod sandbox: deleting it stops the VM.
    owns_vm: bool = False
    relay_pid: int | None = None
    #: The relay's start time (``/proc/<pid>/stat``): a reused pid is never signalled.
    relay_start: str | None = None
    disk_image: str | None = None
    #: Set by ``pause`` on the pod sandbox (its VM, so every container of the pod, is paused).
    paused: bool = False


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, container_id: str) -> Path:
        """Every id becomes a path here, so every id is checked here, whoever supplied it."""
        return self.root / validate_id(container_id)

    @property
    def vms_dir(self) -> Path:
        """Where the VMs' directories (and the state root's fork server) live."""
        return self.root / VMS_DIR

    def vm_dir(self, vm_id: str) -> Path:
        return self.vms_dir / vm_id

    def reserve(self, container_id: str) -> Path:
        """Claim the id: ``mkdir`` is atomic, so of two concurrent creates exactly one wins."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError_(f"cannot create state root {self.root}: {exc}", step="state root") from exc
        path = self.dir(container_id)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError as exc:
            raise IdInUse(f"container {container_id!r} already exists") from exc
        (path / CREATOR_FILE).write_text(identity())
        return path

    def creating_elsewhere(self, container_id: str) -> bool:
        """Whether a live process is still creating this container (its creator file names it)."""
        try:
            return identity_running((self.dir(container_id) / CREATOR_FILE).read_text())
        except OSError:
            return False

    def vm_dirs(self) -> list[Path]:
        vms = self.vms_dir
        if not vms.is_dir():
            return []
        return sorted(p for p in vms.iterdir() if p.is_dir() and not p.name.startswith("."))

    def save(self, record: Record) -> None:
        path = self.dir(record.state.id) / "state.json"
        tmp = path.with_name(f".state.json.{os.getpid()}")
        tmp.write_text(record.model_dump_json(indent=1))
        tmp.replace(path)

    def load(self, container_id: str) -> Record:
        path = self.dir(container_id) / "state.json"
        try:
            return Record.model_validate_json(path.read_text())
        except FileNotFoundError as exc:
            raise NotFound(f"container {container_id!r} does not exist") from exc

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".") and p.name != SNAPSHOTS_DIR and p.is_dir()
        )

    def remove(self, container_id: str) -> None:
        shutil.rmtree(self.dir(container_id), ignore_errors=True)
