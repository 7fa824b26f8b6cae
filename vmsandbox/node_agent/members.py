"""What the agent remembers about each pool member it booted, so a restarted agent adopts them.

``<stateDir>/pool-members/<member id>.json``, written before the member's VM is booted and
removed once it is deleted or handed to a sandbox; the runtime's own record holds the VM.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from vmsandbox.runtime.ids import validate_id


class MemberRecord(BaseModel):
    member_id: str
    #: booted: a VM kept running; snapshot: a snapshot of one under the runtime's snapshot root
    #: (named ``member_id``), which every claim restores a copy of.
    kind: Literal["booted", "snapshot"] = "booted"
    #: ``<namespace>/<pool>`` and the pool's uid: a pool deleted and made again is another pool.
    pool: str
    pool_uid: str
    hypervisor: str
    vcpus: int
    memory_mib: int
    #: The template's network mode the member was booted for (None: the cluster's default).
    network_mode: str | None = None
    #: False while booting; True once the guest agent answered and the member can be claimed.
    ready: bool = False
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class MemberStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, member_id: str) -> Path:
        return self.root / f"{validate_id(member_id)}.json"

    def save(self, record: MemberRecord) -> None:
        path = self._path(record.member_id)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}")
        tmp.write_text(record.model_dump_json(indent=1))
        tmp.replace(path)

    def load_all(self) -> list[MemberRecord]:
        found = []
        for path in sorted(self.root.glob("*.json")):
            try:
                found.append(MemberRecord.model_validate_json(path.read_text()))
            except (OSError, ValidationError):
                path.unlink(missing_ok=True)
        return found

    def remove(self, member_id: str) -> None:
        with contextlib.suppress(OSError):
            self._path(member_id).unlink()
