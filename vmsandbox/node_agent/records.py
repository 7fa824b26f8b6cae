"""What the agent remembers about each sandbox on disk, so a restarted agent can adopt its VMs.

``<stateDir>/sandboxes/<uid>/`` holds ``record.json``, the OCI bundle and the container's log.
The record is written before the VM is created and removed only after teardown, so a crash at
any point leaves enough behind to find and clean up what was started.
"""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

RECORD = "record.json"

Model = TypeVar("Model", bound=BaseModel)


def container_id_for(uid: str) -> str:
    """Short (AF_UNIX paths are derived from it) and unique per sandbox object."""
    return "vmsb-" + uid.replace("-", "")[:16]


class ContainerEnd(BaseModel):
    """How a run ended, written before teardown and before any status write: a lost write (or an
    agent restart) can neither forget the exit code nor start a finished run again."""

    exit_code: int | None = None
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    reason: str
    message: str
    #: The restart policy asked for another run; False: the sandbox is finished for good.
    restart: bool = False


class SandboxRecord(BaseModel):
    uid: str
    namespace: str
    name: str
    container_id: str
    hypervisor: str | None = None
    image_digest: str | None = None
    #: The agent put its finalizer on the object; if it disappears, someone else removed it.
    finalizer_added: bool = False
    #: A container exists in the runtime for this sandbox (created, maybe exited).
    container_created: bool = False
    #: The container was (about to be) started: from here on it may have run, so a vanished
    #: one is reported, not created again (restartPolicy Never runs a sandbox at most once).
    #: None in records written before this field existed: taken as started.
    container_started: bool | None = None
    #: The last run's end, until the next run starts (kept for good when it does not restart).
    finished: ContainerEnd | None = None
    #: When the agent stopped the VM because it could not renew its Lease (fencing).
    fenced_at: datetime | None = None
    #: The sandbox is no longer the agent's business (finalizer taken away, torn down).
    abandoned: bool = False
    #: ``<namespace>/<pool>`` when the sandbox's VM was claimed from a pool.
    pool: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class RecordFiles:
    """A directory of pydantic records, one file each, written whole: a crash mid-write leaves
    the previous record (or none), never half of one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, record: BaseModel) -> None:
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}")
        tmp.write_text(record.model_dump_json(indent=1))
        tmp.replace(path)

    def _read(self, path: Path, model: type[Model]) -> Model | None:
        """None when the file is missing or does not hold a valid record."""
        try:
            return model.model_validate_json(path.read_text())
        except (OSError, ValidationError):
            return None


class RecordStore(RecordFiles):
    def dir_for(self, uid: str) -> Path:
        return self.root / uid

    def bundle_dir(self, uid: str) -> Path:
        return self.dir_for(uid) / "bundle"

    def log_path(self, uid: str) -> Path:
        return self.dir_for(uid) / "container.log"

    def save(self, record: SandboxRecord) -> None:
        directory = self.dir_for(record.uid)
        directory.mkdir(parents=True, exist_ok=True)
        self._write(directory / RECORD, record)

    def load(self, uid: str) -> SandboxRecord | None:
        return self._read(self.dir_for(uid) / RECORD, SandboxRecord)

    def load_all(self) -> list[SandboxRecord]:
        found = []
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            record = self.load(child.name)
            if record is not None:
                found.append(record)
        return found

    def remove(self, uid: str) -> None:
        """Free the sandbox's disk: bundle, root filesystem copy, logs and the record."""
        shutil.rmtree(self.dir_for(uid), ignore_errors=True)

    def unknown_dirs(self) -> list[Path]:
        """Directories without a readable record: left by a crash before the record was written."""
        return [child for child in self.root.iterdir() if child.is_dir() and self.load(child.name) is None]
