"""The HTTPS server of ``subresources.vmsandbox.io/v1alpha1``: discovery, and each sandbox's
``exec``, ``attach``, ``files``, ``log`` and ``portforward`` relayed to its node agent.

The agent is the one the sandbox's Node publishes (``vmsandbox.io/agent-endpoint``); the request
reaches it as ``/<route>/<namespace>/<name>`` with the query unchanged and the operator's own
bearer token, which the agent checks like any caller's (TokenReview, then a SubjectAccessReview
of the same verb on ``vmsandboxes/<subresource>``). The user was authorized by the API server
before the request got here; the agent sees the operator.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from vmsandbox.api.constants import (
    AGENT_ENDPOINT_ANNOTATION,
    NODE_LABEL,
    PLURAL,
    SUBRESOURCE_GROUP,
    SUBRESOURCE_ROUTES,
    SUBRESOURCE_VERSION,
)
from vmsandbox.kube import ApiError
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.paths import node_path, sandbox_path
from vmsandbox.operator.cache import ClusterCache
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.subresources.proxy import AgentProxy
from vmsandbox.operator.subresources.trust import RequestHeaderTrust, Unauthenticated

log = logging.getLogger("vmsandbox.operator.subresources")

GROUP_VERSION = f"{SUBRESOURCE_GROUP}/{SUBRESOURCE_VERSION}"
#: Seconds a Node's agent endpoint is reused (it changes only when an agent moves).
ENDPOINT_TTL = 10.0


def status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason}
    return web.json_response({**body, "code": code}, status=code)


def resource_list() -> dict[str, Any]:
    verbs = {"exec": ["get", "create"], "attach": ["get", "create"], "files": ["get", "create", "update"]}
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {
                "name": f"{PLURAL}/{sub}",
                "singularName": "",
                "namespaced": True,
                "kind": "VMSandbox" if sub != "log" else "Log",
                "verbs": verbs.get(sub, ["get", "create"] if sub != "log" else ["get"]),
            }
            for sub in SUBRESOURCE_ROUTES
        ],
    }


def api_group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": SUBRESOURCE_VERSION}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": SUBRESOURCE_GROUP,
        "versions": [version],
        "preferredVersion": version,
    }


class SubresourceServer:
    def __init__(
        self,
        client: AsyncClient,
        trust: RequestHeaderTrust,
        agent_headers: dict[str, str],
        cache: ClusterCache | None = None,
    ) -> None:
        self.client = client
        #: The operator's watch-fed view of sandboxes and Nodes: no API round trip per request.
        self.cache = cache
        self.trust = trust
        self.proxy = AgentProxy(agent_headers)
        self._endpoints: dict[str, tuple[float, str]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        base = f"/apis/{SUBRESOURCE_GROUP}"
        app.router.add_get("/healthz", self._health)
        app.router.add_get(base, self._group)
        app.router.add_get(f"{base}/{SUBRESOURCE_VERSION}", self._resources)
        app.router.add_route(
            "*",
            f"{base}/{SUBRESOURCE_VERSION}/namespaces/{{ns}}/{PLURAL}/{{name}}/{{sub}}",
            self._subresource,
        )
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        await self.proxy.open()

    async def _close(self, _app: web.Application) -> None:
        await self.proxy.close()

    def _authenticate(self, request: web.Request) -> web.Response | None:
        try:
            user = self.trust.user(
                request.transport.get_extra_info("peercert") if request.transport else None, request.headers
            )
        except Unauthenticated as exc:
            return status(401, "Unauthorized", str(exc))
        request["user"] = user
        return None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _group(self, request: web.Request) -> web.Response:
        return self._authenticate(request) or web.json_response(api_group())

    async def _resources(self, request: web.Request) -> web.Response:
        return self._authenticate(request) or web.json_response(resource_list())

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._authenticate(request) or status(
            404, "NotFound", "the server could not find the requested resource"
        )

    async def _subresource(self, request: web.Request) -> web.StreamResponse:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        ns, name, sub = request.match_info["ns"], request.match_info["name"], request.match_info["sub"]
        if sub not in SUBRESOURCE_ROUTES:
            return status(404, "NotFound", f'{PLURAL} has no subresource "{sub}"')
        try:
            endpoint = await self._agent_of(ns, name)
        except _Unavailable as exc:
            return status(exc.code, exc.reason, str(exc))
        route = SUBRESOURCE_ROUTES[sub][0]
        target = f"{endpoint.rstrip('/')}/{route}/{quote(ns, safe='')}/{quote(name, safe='')}"
        query = request.rel_url.raw_query_string
        user = request["user"]
        log.info("%s: %s %s on %s/%s via %s", user.name, request.method, sub, ns, name, endpoint)
        return await self.proxy.relay(request, target + (f"?{query}" if query else ""))

    async def _agent_of(self, namespace: str, name: str) -> str:
        if self.cache is not None:
            entry = self.cache.sandboxes.get(f"{namespace}/{name}")
            node_obj = self.cache.nodes.get(entry.node) if entry is not None and entry.node else None
            endpoint = ((node_obj or {}).get("metadata", {}).get("annotations") or {}).get(
                AGENT_ENDPOINT_ANNOTATION
            )
            if endpoint:
                return str(endpoint)
        try:
            sandbox = await self.client.get(sandbox_path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                raise _Unavailable(404, "NotFound", f'{PLURAL}.vmsandbox.io "{name}" not found') from None
            raise _Unavailable(503, "ServiceUnavailable", str(exc)) from None
        node = (sandbox.get("status") or {}).get("nodeName") or (sandbox["metadata"].get("labels") or {}).get(
            NODE_LABEL
        )
        if not node:
            raise _Unavailable(409, "Conflict", f"{namespace}/{name} is not scheduled to a node yet")
        cached = self._endpoints.get(node)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            node_obj = await self.client.get(node_path(node))
        except ApiError as exc:
            raise _Unavailable(503, "ServiceUnavailable", f"node {node}: {exc}") from None
        endpoint = (node_obj["metadata"].get("annotations") or {}).get(AGENT_ENDPOINT_ANNOTATION)
        if not endpoint:
            raise _Unavailable(
                503, "ServiceUnavailable", f"node {node} publishes no {AGENT_ENDPOINT_ANNOTATION}"
            )
        self._endpoints[node] = (now + ENDPOINT_TTL, endpoint)
        return str(endpoint)


class _Unavailable(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


async def serve(
    server: SubresourceServer, host: str, port: int, certfile: Path, keyfile: Path
) -> web.AppRunner:
    """Starts serving; the caller cleans the returned runner up."""
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    ctx = server.trust.server_context(certfile, keyfile)
    await web.TCPSite(runner, host, port, ssl_context=ctx, shutdown_timeout=1.0).start()
    log.info("serving %s on %s:%s", GROUP_VERSION, host, port)
    return runner


async def start_subresources(
    config: OperatorConfig, client: AsyncClient, cache: ClusterCache | None = None
) -> web.AppRunner:
    """The server as the operator's settings describe it (requestheader CA from file or ConfigMap)."""
    assert config.subresources_certfile is not None and config.subresources_keyfile is not None
    if config.requestheader_ca_file is not None:
        trust = RequestHeaderTrust.from_file(config.requestheader_ca_file)
    else:
        trust = await RequestHeaderTrust.from_configmap(client)
    server = SubresourceServer(client, trust, client.connection.headers(), cache)
    return await serve(
        server,
        config.subresources_host,
        config.subresources_port,
        config.subresources_certfile,
        config.subresources_keyfile,
    )
