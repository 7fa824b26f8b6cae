"""What the agent remembers about each pool member it booted, so a restarted agent adopts them.

``<stateDir>/pool-members/<member id>.json``, written before the member's VM is booted and
removed once it is deleted or handed to a sandbox; the runtime's own record holds the VM.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from vmsandbox.node_agent.records import RecordFiles
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


class MemberStore(RecordFiles):
    def _path(self, member_id: str) -> Path:
        return self.root / f"{validate_id(member_id)}.json"

    def save(self, record: MemberRecord) -> None:
        self._write(self._path(record.member_id), record)

    def load_all(self) -> list[MemberRecord]:
        found = []
        for path in sorted(self.root.glob("*.json")):
            record = self._read(path, MemberRecord)
            if record is None:
                path.unlink(missing_ok=True)
            else:
                found.append(record)
        return found

    def remove(self, member_id: str) -> None:
        with contextlib.suppress(OSError):
            self._path(member_id).unlink()
