"""The asynchronous face (the operator): one pooled aiohttp session over the same requests and
answers as :class:`vmsandbox.kube.client.Client`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack

import aiohttp

from vmsandbox.kube import wire
from vmsandbox.kube.connection import Connection


class AsyncClient:
    """Every method raises :class:`ApiError` on a refusal or no answer."""

    def __init__(
        self,
        connection: Connection,
        *,
        user_agent: str = "vmsandbox-operator",
        pool_size: int = 64,
        timeout: float = wire.DEFAULT_TIMEOUT,
    ) -> None:
        self.connection = connection
        self.user_agent = user_agent
        self._pool_size = pool_size
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl = self.connection.ssl_context()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl if ssl is not None else False, limit=self._pool_size),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, **options: Unpack[wire.Options]) -> dict[str, Any]:
        req = wire.request(method, path, **options)
        session = self._open()
        headers = req.headers(self.connection.headers(), self.user_agent)
        try:
            async with session.request(
                method, req.url(self.connection.server), data=req.body, headers=headers
            ) as resp:
                text = await resp.text()
                status, answer_headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise wire.unreachable(req, exc) from None
        return wire.decode(req, status, answer_headers, text)

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def list_objects(self, path: str, *, label_selector: str = "") -> dict[str, Any]:
        params = {"labelSelector": label_selector} if label_selector else None
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=ops, content_type=wire.JSON_PATCH)

    async def delete(self, path: str, *, precondition_uid: str | None = None) -> dict[str, Any]:
        body = {"preconditions": {"uid": precondition_uid}} if precondition_uid else None
        return await self.request("DELETE", path, body=body)
