"""A JSON-lines record of every API request clients made through the front.

RBAC rules are derived from it: it lists, per user agent and user, which verbs on which
resources the operator and the agent really use.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field

from vmsandbox.devcluster.apipath import ApiPath

#: Environment variable naming the file the front appends its records to.
REQUEST_LOG_ENV = "VMSANDBOX_DEVCLUSTER_REQUEST_LOG"


class RequestRecord(BaseModel):
    """One request as RBAC sees it (``group`` "" is the core group; ``resource`` "" a non-resource URL)."""

    time: float = Field(default_factory=time.time)
    method: str
    path: str
    verb: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    user: str = ""
    user_agent: str = ""
    status: int = 0

    @classmethod
    def of(
        cls,
        method: str,
        path: str,
        api: ApiPath | None,
        query: Mapping[str, str],
        *,
        user: str,
        user_agent: str = "",
    ) -> RequestRecord:
        """The request ``method path`` (``api`` its parse): a non-resource URL's verb is the method."""
        record = cls(method=method, path=path, user=user, user_agent=user_agent)
        if api is None:
            record.verb = method.lower()
            return record
        return record.model_copy(update={"verb": api.verb(method, query), **api.model_dump()})


class RequestLogWriter:
    """Appends records, one flushed line each, so readers see them while the front runs."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: RequestRecord) -> None:
        self._file.write(record.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_request_log(path: Path, *, since: int = 0) -> list[RequestRecord]:
    """Records in ``path`` from line ``since`` on (a torn last line, still being written, is left out)."""
    if not path.exists():
        return []
    records: list[RequestRecord] = []
    with path.open(encoding="utf-8") as fh:
        for index, line in enumerate(fh):
            if index < since or not line.endswith("\n"):
                continue
            records.append(RequestRecord.model_validate_json(line))
    return records
