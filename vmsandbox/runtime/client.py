"""Request/response calls to a guest agent over a fresh driver connection per call."""

from __future__ import annotations

import socket
from typing import TypeVar

from vmsandbox.guest.protocol import Failure, ProtocolError, Reply, Request, recv_reply, send_frame
from vmsandbox.hypervisor.base import HypervisorDriver, HypervisorError, VMHandle
from vmsandbox.runtime.errors import AgentError

R = TypeVar("R")


class AgentClient:
    def __init__(self, driver: HypervisorDriver, handle: VMHandle) -> None:
        self.driver = driver
        self.handle = handle

    def connect(self, timeout: float = 10.0) -> socket.socket:
        try:
            return self.driver.connect(self.handle, timeout=timeout)
        except HypervisorError as exc:
            raise AgentError(str(exc), step="guest agent connect") from exc

    def call(self, request: Request, expect: type[R], timeout: float | None = 60.0) -> R:
        """Send ``request``; return the reply if it is an ``expect``, else raise naming the step."""
        with self.connect() as sock:
            sock.settimeout(timeout)
            try:
                send_frame(sock, request)
                reply: Reply = recv_reply(sock)
            except (OSError, ProtocolError) as exc:
                raise AgentError(f"{request.op}: {exc}", step="guest agent") from exc
        if isinstance(reply, Failure):
            raise AgentError(reply.detail, step=f"guest {reply.step}")
        if not isinstance(reply, expect):
            raise AgentError(f"{request.op}: unexpected reply {reply.type!r}", step="guest agent")
        return reply
