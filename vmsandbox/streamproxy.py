"""What the proxies share (the local control plane's front and aggregation, and the operator's
subresource server to an agent): the headers never passed on, the upstream session of the two
streaming ones, the relay of a streamed body, and that of one WebSocket (exec, attach) to another."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiohttp import web

#: Headers that describe one connection (RFC 9110 section 7.6.1) or its framing: a proxy never
#: passes them on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
#: Close codes that only describe a connection locally, and may never be sent.
LOCAL_CLOSE_CODES = (1005, 1006, 1015)


def streaming_session() -> aiohttp.ClientSession:
    """Bodies passed on as they come (no decompression), no cap on connections, and no total
    timeout: a log follow or an exec lasts as long as the caller wants."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    )


async def relay_body(
    request: web.Request, resp: web.StreamResponse, up: aiohttp.ClientResponse
) -> web.StreamResponse:
    """Send ``resp``'s head, then ``up``'s body as it comes; once the head is out, either side
    dropping can only end the body early."""
    await resp.prepare(request)
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
    return resp


def wire_code(code: int | None) -> int:
    """The close code to pass on: a received one if it may be sent, else a normal close."""
    return code if code and 1000 <= code < 5000 and code not in LOCAL_CLOSE_CODES else 1000


async def relay_websockets(down: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
    """Messages both ways until either side closes; the close (and its code) is passed on."""

    async def pump(src: Any, dst: Any) -> None:
        async for msg in src:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
        await dst.close(code=wire_code(src.close_code))

    tasks = [asyncio.ensure_future(pump(down, up)), asyncio.ensure_future(pump(up, down))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await up.close()
        await down.close()
