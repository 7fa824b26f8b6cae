"""What kube-apiserver's aggregator does for APIService objects, in the front.

A request under ``/apis/<group>/<version>`` of a stored APIService with a ``spec.service`` goes,
once the front has authenticated it and authorized it with its RBAC, to that Service's
``spec.clusterIP`` on ``spec.service.port`` over TLS: the serving certificate is checked
against ``spec.caBundle`` for the name ``<service>.<namespace>.svc`` (unless
``insecureSkipTLSVerify``), and the front presents its front-proxy client certificate, signed by
a requestheader CA of its own. The user travels as ``X-Remote-User`` and ``X-Remote-Group``
(any such header a client sent is dropped), as kube-apiserver's requestheader authentication
expects; the client's own credentials are not forwarded. WebSocket upgrades are relayed message
by message. ``/apis/<group>`` itself is answered here, as the aggregator does.

Aggregated servers learn the requestheader CA, the allowed client names and the header names
from ``kube-system/extension-apiserver-authentication`` (:func:`authentication_configmap`).
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from vmsandbox.devcluster.corekinds import AGGREGATION_KINDS
from vmsandbox.devcluster.objectstore import Fetch, ObjectStore
from vmsandbox.devcluster.rbac import UserInfo
from vmsandbox.streamproxy import HOP_BY_HOP, relay_body, relay_websockets, streaming_session

log = logging.getLogger("vmsandbox.devcluster.aggregator")

#: The client certificate's common name, the one the ConfigMap lists as allowed.
FRONT_PROXY_CLIENT = "front-proxy-client"
AUTH_CONFIGMAP_NAMESPACE = "kube-system"
AUTH_CONFIGMAP_NAME = "extension-apiserver-authentication"
USER_HEADER, GROUP_HEADER, EXTRA_PREFIX = "X-Remote-User", "X-Remote-Group", "X-Remote-Extra-"
#: Headers not passed on: hop-by-hop, the client's credentials, the identity headers, the handshake.
_DROPPED = HOP_BY_HOP | {"authorization"}


def _dropped(name: str) -> bool:
    lower = name.lower()
    return lower in _DROPPED or lower.startswith(("x-remote-", "sec-websocket-"))


@dataclass(frozen=True)
class Backend:
    """Where one APIService's group/version is served."""

    api_service: str
    group: str
    version: str
    url: str
    server_name: str
    ca_bundle: bytes | None
    insecure: bool


def routing_table(objects: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Backend]:
    """(group, version) -> Backend, from the stored APIServices and Services (public objects)."""
    services = {
        ((o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name")): o
        for o in objects
        if o.get("kind") == "Service"
    }
    table: dict[tuple[str, str], Backend] = {}
    for obj in objects:
        if obj.get("kind") != "APIService":
            continue
        spec = obj.get("spec") or {}
        ref = spec.get("service") or {}
        service = services.get((ref.get("namespace"), ref.get("name")))
        if not ref or service is None:
            continue  # Local APIServices, and ones whose Service is missing, are not routed
        address = (service.get("spec") or {}).get("clusterIP")
        if not address or address == "None":
            continue
        ca = base64.b64decode(spec["caBundle"]) if spec.get("caBundle") else None
        table[(str(spec.get("group")), str(spec.get("version")))] = Backend(
            api_service=str((obj.get("metadata") or {}).get("name")),
            group=str(spec.get("group")),
            version=str(spec.get("version")),
            url=f"https://{address}:{int(ref.get('port') or 443)}",
            server_name=f"{ref['name']}.{ref['namespace']}.svc",
            ca_bundle=ca,
            insecure=bool(spec.get("insecureSkipTLSVerify")),
        )
    return table


def authentication_configmap(requestheader_ca: Path) -> dict[str, Any]:
    """``kube-system/extension-apiserver-authentication``, as kube-apiserver publishes it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": AUTH_CONFIGMAP_NAME, "namespace": AUTH_CONFIGMAP_NAMESPACE},
        "data": {
            "requestheader-client-ca-file": requestheader_ca.read_text(),
            "requestheader-allowed-names": json.dumps([FRONT_PROXY_CLIENT]),
            "requestheader-username-headers": json.dumps([USER_HEADER]),
            "requestheader-group-headers": json.dumps([GROUP_HEADER]),
            "requestheader-extra-headers-prefix": json.dumps([EXTRA_PREFIX]),
        },
    }


class Aggregator:
    """Routes and proxies requests for aggregated group/versions; ``client_cert`` is (cert, key)."""

    def __init__(self, fetch: Fetch, client_cert: tuple[Path, Path] | None) -> None:
        self.store: ObjectStore[dict[tuple[str, str], Backend]] = ObjectStore(
            AGGREGATION_KINDS, fetch, routing_table
        )
        self.client_cert = client_cert
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[tuple[bytes | None, bool], ssl.SSLContext] = {}

    async def open(self) -> None:
        self._session = streaming_session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def backend(self, group: str, version: str | None = None) -> Backend | None:
        table = await self.store.get()
        if version is not None:
            return table.get((group, version))
        return next((b for (g, _), b in sorted(table.items()) if g == group), None)

    async def groups(self) -> list[dict[str, Any]]:
        """APIGroup entries of the aggregated groups, for ``/apis``."""
        by_group: dict[str, list[str]] = {}
        for group, version in sorted((await self.store.get()).keys()):
            by_group.setdefault(group, []).append(version)
        return [_api_group(g, vs) for g, vs in by_group.items()]

    async def group_document(self, group: str) -> web.Response | None:
        versions = [v for g, v in await self.store.get() if g == group]
        return web.json_response(_api_group(group, sorted(versions))) if versions else None

    def _ssl(self, backend: Backend) -> ssl.SSLContext:
        key = (backend.ca_bundle, backend.insecure)
        ctx = self._contexts.get(key)
        if ctx is None:
            if backend.ca_bundle is not None and not backend.insecure:
                ctx = ssl.create_default_context(cadata=backend.ca_bundle.decode())
            else:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.client_cert is not None:
                ctx.load_cert_chain(*self.client_cert)
            self._contexts[key] = ctx
        return ctx

    def _headers(self, request: web.BaseRequest, user: UserInfo) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict((k, v) for k, v in request.headers.items() if not _dropped(k))
        headers[USER_HEADER] = user.name
        for group in user.groups:
            headers.add(GROUP_HEADER, group)
        return headers

    async def proxy(
        self, request: web.Request, backend: Backend, user: UserInfo, on_status: Callable[[int], None]
    ) -> web.StreamResponse:
        """Relays ``request`` to ``backend``; ``on_status`` hears the answer's status before its body
        is relayed, so a record of the request exists by the time the client has the whole answer."""
        assert self._session is not None
        url = URL(backend.url + request.raw_path, encoded=True)
        headers = self._headers(request, user)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, url, headers, backend, on_status)
        # Streamed, as kube-apiserver's proxy does: a file upload may be far larger than memory.
        body = request.content.iter_any() if request.body_exists else None
        try:
            up = await self._session.request(
                request.method,
                url,
                data=body,
                headers=headers,
                ssl=self._ssl(backend),
                server_hostname=backend.server_name,
            )
        except (aiohttp.ClientError, OSError) as exc:
            return _unavailable(backend, exc)
        async with up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for key, value in up.headers.items():
                if key.lower() not in _DROPPED:
                    resp.headers.add(key, value)
            on_status(up.status)
            return await relay_body(request, resp, up)

    async def _websocket(
        self,
        request: web.Request,
        url: URL,
        headers: CIMultiDict[str],
        backend: Backend,
        on_status: Callable[[int], None],
    ) -> web.StreamResponse:
        assert self._session is not None
        offered = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
        ]
        try:
            upstream = await self._session.ws_connect(
                url,
                protocols=offered,
                headers=headers,
                max_msg_size=0,
                ssl=self._ssl(backend),
                server_hostname=backend.server_name,
            )
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status, text=f"{exc.message}\n")
        except (aiohttp.ClientError, OSError) as exc:
            return web.Response(status=503, text=f"the aggregated server did not answer: {exc}\n")
        async with upstream:
            down = web.WebSocketResponse(
                protocols=[upstream.protocol] if upstream.protocol else (), max_msg_size=0
            )
            on_status(101)
            await down.prepare(request)
            await relay_websockets(down, upstream)
            return down


def _api_group(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def _unavailable(backend: Backend, exc: BaseException) -> web.Response:
    message = f'error trying to reach service: APIService "{backend.api_service}": {exc}'
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return web.json_response({**body, "reason": "ServiceUnavailable", "code": 503}, status=503)
