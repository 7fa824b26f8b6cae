"""Use sandboxes from Python: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio)."""

from vmsandbox.sdk.aio import AsyncClient, AsyncSandbox
from vmsandbox.sdk.client import Client, CommandResult, Sandbox, SandboxError

__all__ = ["AsyncClient", "AsyncSandbox", "Client", "CommandResult", "Sandbox", "SandboxError"]
