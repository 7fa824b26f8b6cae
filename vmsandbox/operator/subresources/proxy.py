"""Relaying one request to a node agent: plain HTTP streamed both ways, or a WebSocket
(the remote-command subprotocol the agent picks is the one the client gets)."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from yarl import URL

from vmsandbox.streamproxy import relay_body, relay_websockets, streaming_session

#: Request headers passed on to the agent (the caller's credentials and identity are not).
_FORWARDED = ("Content-Type", "Accept", "User-Agent")
_RESPONSE_HEADERS = ("Content-Type", "X-Vmsandbox-Kind")


class AgentProxy:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = streaming_session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, request: web.Request) -> dict[str, str]:
        kept = {h: request.headers[h] for h in _FORWARDED if h in request.headers}
        return {**kept, **self.headers}

    async def relay(self, request: web.Request, url: str) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, url)
        assert self._session is not None
        body = request.content.iter_any() if request.body_exists else None
        try:
            up = await self._session.request(
                request.method, URL(url, encoded=True), data=body, headers=self._headers(request)
            )
        except (aiohttp.ClientError, OSError) as exc:
            return web.Response(status=502, text=f"the node agent did not answer: {exc}\n")
        async with up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for name in _RESPONSE_HEADERS:
                if name in up.headers:
                    resp.headers[name] = up.headers[name]
            return await relay_body(request, resp, up)

    async def _websocket(self, request: web.Request, url: str) -> web.StreamResponse:
        assert self._session is not None
        offered = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
        ]
        try:
            up = await self._session.ws_connect(
                URL(url.replace("http", "ws", 1), encoded=True),
                protocols=offered,
                headers=self.headers,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status, text=f"the node agent refused: {exc.message}\n")
        except (aiohttp.ClientError, OSError) as exc:
            return web.Response(status=502, text=f"the node agent did not answer: {exc}\n")
        async with up:
            down = web.WebSocketResponse(protocols=[up.protocol] if up.protocol else (), max_msg_size=0)
            await down.prepare(request)
            await relay_websockets(down, up)
            return down
