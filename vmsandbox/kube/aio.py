"""The asynchronous face (the operator): one pooled aiohttp session over the same requests and
answers as :class:`vmsandbox.kube.client.Client`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Unpack

import aiohttp

from vmsandbox.kube import wire
from vmsandbox.kube.clientbase import ClientBase, delete_body, list_params


@dataclass(eq=False, repr=False, kw_only=True)
class AsyncClient(ClientBase):
    """Every method raises :class:`ApiError` on a refusal or no answer."""

    user_agent: str = "vmsandbox-operator"
    pool_size: int = 64
    _session: aiohttp.ClientSession | None = field(init=False, default=None)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl = self.connection.ssl_context()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl if ssl is not None else False, limit=self.pool_size),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, **options: Unpack[wire.Options]) -> dict[str, Any]:
        req = wire.request(method, path, **options)
        session = self._open()
        headers = self.headers(req)
        try:
            async with session.request(method, self.url(req), data=req.body, headers=headers) as resp:
                text = await resp.text()
                status, answer_headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise wire.unreachable(req, exc) from None
        return wire.decode(req, status, answer_headers, text)

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def list_objects(self, path: str, *, label_selector: str = "") -> dict[str, Any]:
        return await self.request("GET", path, params=list_params(label_selector))

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=ops, content_type=wire.JSON_PATCH)

    async def delete(self, path: str, *, precondition_uid: str | None = None) -> dict[str, Any]:
        return await self.request("DELETE", path, body=delete_body(precondition_uid))
