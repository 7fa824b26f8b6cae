"""What the synchronous and the asynchronous client share: the server and who asks it, the pool
and time budget, and how a request is addressed and shaped; only the sending differs."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

from vmsandbox.kube import wire
from vmsandbox.kube.connection import Connection


@dataclass(eq=False, repr=False)
class ClientBase:
    """Not shown by ``repr``: the connection holds the bearer token."""

    connection: Connection
    _: KW_ONLY
    user_agent: str
    #: Connections kept open to the server at most.
    pool_size: int
    #: Seconds a request may take when it names no timeout of its own.
    timeout: float = wire.DEFAULT_TIMEOUT

    def url(self, req: wire.Request) -> str:
        return req.url(self.connection.server)

    def headers(self, req: wire.Request) -> dict[str, str]:
        return req.headers(self.connection.headers(), self.user_agent)


def list_params(label_selector: str) -> dict[str, str] | None:
    return {"labelSelector": label_selector} if label_selector else None


def delete_body(precondition_uid: str | None) -> dict[str, Any] | None:
    """Delete only the object with this uid (not a namesake made since)."""
    return {"preconditions": {"uid": precondition_uid}} if precondition_uid else None
