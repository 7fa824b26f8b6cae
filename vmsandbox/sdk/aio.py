"""The SDK for asyncio code: the same calls, awaited; each runs the blocking client in a thread.

async with AsyncClient(namespace="default") as client:
    box = await client.create("demo", image=...)
    result = await box.run(["echo", "hi"])
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from vmsandbox.sdk.client import Client, CommandResult, Sandbox


class AsyncClient:
    def __init__(
        self, namespace: str = "default", kubeconfig: str | None = None, *, direct: bool = False
    ) -> None:
        self.sync = Client(namespace, kubeconfig, direct=direct)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sync.close()

    async def create(
        self, name: str, image: str, command: list[str] | None = None, **kw: Any
    ) -> AsyncSandbox:
        box = await asyncio.to_thread(self.sync.create, name, image, command, **kw)
        return AsyncSandbox(box)

    def sandbox(self, name: str) -> AsyncSandbox:
        return AsyncSandbox(self.sync.sandbox(name))


class AsyncSandbox:
    def __init__(self, sync: Sandbox) -> None:
        self.sync = sync
        self.name = sync.name

    async def wait_running(self, timeout: float = 180.0) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.wait_running, timeout)

    async def run(self, command: list[str], *, stdin: bytes | None = None) -> CommandResult:
        return await asyncio.to_thread(self.sync.run, command, stdin=stdin)

    async def stream(self, command: list[str]) -> AsyncIterator[tuple[Literal["stdout", "stderr"], bytes]]:
        """Output as it comes; the blocking reader runs in a thread and hands pieces over a queue."""
        queue: asyncio.Queue[tuple[Literal["stdout", "stderr"], bytes] | BaseException | None] = (
            asyncio.Queue(16)
        )
        loop = asyncio.get_running_loop()

        def pump() -> None:
            try:
                for item in self.sync.stream(command):
                    asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
            except BaseException as exc:  # handed to the awaiting side, raised there
                asyncio.run_coroutine_threadsafe(queue.put(exc), loop).result()

        task = asyncio.create_task(asyncio.to_thread(pump))
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
        await task

    async def write(self, path: str, data: bytes, *, mode: int | None = None) -> None:
        await asyncio.to_thread(self.sync.write, path, data, mode=mode)

    async def read(self, path: str) -> bytes:
        return await asyncio.to_thread(self.sync.read, path)

    async def list(self, path: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync.list, path)

    async def delete(self, *, wait: bool = True) -> None:
        await asyncio.to_thread(self.sync.delete, wait=wait)
