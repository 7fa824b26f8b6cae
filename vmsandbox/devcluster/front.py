"""The front server: what clients talk to, in front of the real apiextensions-apiserver.

It serves what the standalone CRD server lacks and proxies everything else to it:

- authentication: the bearer token *is* the user name (:mod:`vmsandbox.devcluster.rbac` gives
  it its groups), for client requests and for the server's delegated TokenReviews;
- authorization: Kubernetes RBAC from the stored Role, ClusterRole, RoleBinding and
  ClusterRoleBinding objects, for every client request (403 with kube-apiserver's Status) and
  for every SubjectAccessReview it answers (the server's delegated ones and clients');
- admission: the stored ValidatingAdmissionPolicies, for writes to custom resources
  (:mod:`vmsandbox.devcluster.admission`);
- discovery: ``/api``, ``/api/v1``, the ``/apis`` group list, and the emulated groups;
- the core kinds in :mod:`vmsandbox.devcluster.corekinds`, by rewriting paths and
  ``apiVersion`` to and from their look-alike CRDs (requests, responses, list items, Table
  rows, watch event streams, error messages); strategic merge patches are applied here
  (read, merge, update with the read resourceVersion, retried on conflict) because CRD
  storage only takes JSON/merge/apply patches; a created Namespace gets ``status.phase:
  Active`` and a created Node keeps the status it was created with, as on a real server;
  deleting a Namespace first deletes the objects in it;
- aggregation: requests for the group/version of a stored APIService go to its Service with the
  user in ``X-Remote-User``/``X-Remote-Group`` and a front-proxy client certificate
  (:mod:`vmsandbox.devcluster.aggregator`).

Every client request is appended to an optional JSON-lines request log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml
from aiohttp import web
from yarl import URL

from vmsandbox.devcluster import openapi
from vmsandbox.devcluster.admission import OPERATIONS, CompiledPolicy, compile_policies, evaluate
from vmsandbox.devcluster.aggregator import Aggregator
from vmsandbox.devcluster.apipath import HEALTH_PATH, ApiPath, parse_api_path
from vmsandbox.devcluster.corekinds import (
    ADMISSION_GROUP,
    ADMISSION_KINDS,
    AGGREGATION_KINDS,
    BY_PRIVATE,
    BY_PUBLIC,
    EMULATED_GROUPS,
    RBAC_GROUP,
    RBAC_KINDS,
    CoreKind,
    is_private_group,
)
from vmsandbox.devcluster.discovery import api_group, api_group_list, api_versions, public_resource_list
from vmsandbox.devcluster.faults import FAULTS_PATH, Faults
from vmsandbox.devcluster.objectstore import ObjectStore
from vmsandbox.devcluster.protobuf import ProtobufError, decode_namespace
from vmsandbox.devcluster.rbac import (
    Attributes,
    Policy,
    UserInfo,
    forbidden_status,
    request_attributes,
    user_from_header,
    user_from_token,
)
from vmsandbox.devcluster.requestlog import REQUEST_LOG_ENV, RequestLogWriter, RequestRecord
from vmsandbox.devcluster.strategic import StrategicPatchError, apply_strategic_merge
from vmsandbox.devcluster.translate import to_private, to_public
from vmsandbox.streamproxy import HOP_BY_HOP

log = logging.getLogger("vmsandbox.devcluster.front")

#: Identity the front uses for its own calls (discovery, policy reads, the stored core kinds).
FRONT_TOKEN = "system:devcluster:front"
#: User agent prefix of the apiserver's own calls (delegated auth, informers): not logged.
_INTERNAL_AGENT = "apiextensions-apiserver"
#: Not passed on: the connection's own headers, and the encodings (the front asks the server for
#: unencoded bodies, which it reads).
_HOP_BY_HOP = HOP_BY_HOP | {"accept-encoding", "content-encoding"}
_JSON_BODY_TYPES = frozenset({"application/json", "application/merge-patch+json"})
_YAML_BODY_TYPES = frozenset({"application/yaml", "application/apply-patch+yaml"})
_SMP = "application/strategic-merge-patch+json"
_ACCESS_REVIEWS = frozenset({"subjectaccessreviews", "selfsubjectaccessreviews", "localsubjectaccessreviews"})
_CONFLICT_RETRIES = 5
_BUILTIN_GROUPS = frozenset({"authentication.k8s.io", "authorization.k8s.io", "apiextensions.k8s.io"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason}
    return web.json_response({**body, "code": code}, status=code)


def _user(request: web.BaseRequest) -> str:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else "system:anonymous"


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


class Front:
    """The aiohttp application; ``upstream`` is the real server's https URL (certificate unchecked)."""

    def __init__(
        self,
        upstream: str,
        request_log: Path | None = None,
        front_proxy: tuple[Path, Path] | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        #: Test-only injected failures (``--fault-injection``); None: none can be injected.
        self.faults = faults
        self._log = RequestLogWriter(request_log) if request_log else None
        self._session: aiohttp.ClientSession | None = None
        self.rbac: ObjectStore[Policy] = ObjectStore(RBAC_KINDS, self._get_json, Policy.from_objects)
        self.admission: ObjectStore[list[CompiledPolicy]] = ObjectStore(
            ADMISSION_KINDS, self._get_json, compile_policies
        )
        self.aggregator = Aggregator(self._get_json, front_proxy)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False, limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        await self.aggregator.open()

    async def _close(self, _app: web.Application) -> None:
        await self.aggregator.close()
        if self._session is not None:
            await self._session.close()
        if self._log is not None:
            self._log.close()

    # -- entry point -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api = parse_api_path(request.path)
        record = RequestRecord.of(
            request.method,
            request.path,
            api,
            request.query,
            user=_user(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        logged = False

        def commit(status: int) -> None:
            nonlocal logged
            if logged or self._log is None or record.user_agent.startswith(_INTERNAL_AGENT):
                return
            logged = True
            self._log.write(record.model_copy(update={"status": status}))

        # Shielded: a client that goes away mid-request (a SIGKILLed operator) must not cancel
        # the upstream exchange, or a write the server applied would be missing from the log.
        task = asyncio.ensure_future(self._dispatch(request, api, commit))
        try:
            response = await asyncio.shield(task)
        except (aiohttp.ClientError, OSError) as exc:
            response = _status(502, "ServiceUnavailable", f"devcluster front: upstream request failed: {exc}")
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                commit((await task).status)
            raise
        commit(response.status)
        return response

    async def _dispatch(
        self, request: web.Request, api: ApiPath | None, commit: Callable[[int], None]
    ) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path == HEALTH_PATH:
            return web.json_response({"ok": True})
        user = user_from_header(request.headers.get("Authorization", ""))
        attrs = request_attributes(user, request.method, request.path, request.query, api)
        # system:masters is decided without the policy: the server's own delegated reviews (and the
        # front's reads of the policy) must never wait for the policy they are part of loading.
        if not user.superuser and not (await self.rbac.get()).allows(attrs):
            return web.json_response(forbidden_status(attrs), status=403)
        if self.faults is not None:  # only those RBAC allows to (cluster-admin: every URL)
            if path == FAULTS_PATH:
                return await self.faults.serve(request)
            fault = self.faults.take(request.method, request.path, user.name)
            if fault is not None:
                return fault.response()
        aggregated = await self._aggregated(request, api, attrs, commit)
        if aggregated is not None:
            return aggregated
        # Not for the cluster's own components (system:masters): the server's delegated reviews
        # must never wait for the policies the front is loading through the server.
        if (
            not user.superuser
            and api is not None
            and api.resource
            and request.method in OPERATIONS
            and (api.name or request.method == "POST")
            and api.group not in EMULATED_GROUPS
        ):
            denial = await self._admit(request, api, user)
            if denial is not None:
                return denial
        response = await self._serve(request, api, commit)
        if request.method not in ("GET", "HEAD") and api is not None:
            if _changes_policy(api):
                self.rbac.invalidate()
            if api.group in (ADMISSION_GROUP, "apiextensions.k8s.io"):
                self.admission.invalidate()
            if any(api.group == k.group and api.resource == k.plural for k in AGGREGATION_KINDS):
                self.aggregator.store.invalidate()
        return response

    async def _aggregated(
        self, request: web.Request, api: ApiPath | None, attrs: Attributes, commit: Callable[[int], None]
    ) -> web.StreamResponse | None:
        """The answer for a group an APIService names (authorized already), else None."""
        segs = request.path.strip("/").split("/")
        group = segs[1] if len(segs) >= 2 and segs[0] == "apis" else ""
        # The built-in groups never wait for the routing table: the server's delegated reviews
        # pass here while the table is being read through the server.
        if not group or group in _BUILTIN_GROUPS or group in EMULATED_GROUPS or is_private_group(group):
            return None
        if len(segs) == 2 and request.method == "GET":
            return await self.aggregator.group_document(group)
        if api is None:
            return None
        backend = await self.aggregator.backend(api.group, api.version)
        if backend is None:
            return None
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade and attrs.verb == "get" and not attrs.user.superuser:
            # As kube-apiserver does for pods/exec: a WebSocket GET must also be allowed to create.
            creating = replace(attrs, verb="create")
            if not (await self.rbac.get()).allows(creating):
                return web.json_response(forbidden_status(creating), status=403)
        return await self.aggregator.proxy(request, backend, attrs.user, commit)

    async def _admit(self, request: web.Request, api: ApiPath, user: UserInfo) -> web.Response | None:
        """The stored ValidatingAdmissionPolicies, for a write to one custom resource (not for the
        emulated core kinds). The object a write would produce comes from a dry run of it."""
        policies = await self.admission.get()
        operation = OPERATIONS[request.method]
        if not any(p.applies(api.group, api.resource, api.subresource, operation) for p in policies):
            return None
        old: Any = None
        if operation != "CREATE":
            old_status, old = await self._get_json(api.model_copy(update={"subresource": ""}).render())
            old = old if old_status == 200 else None
        new: Any = None
        if operation != "DELETE":
            query = request.rel_url.raw_query_string
            url = URL(f"{self.upstream}{request.raw_path}{'&' if query else '?'}dryRun=All", encoded=True)
            body = await request.read()
            async with await self._upstream(
                request.method, url, data=body or None, headers=self._forward_headers(request)
            ) as up:
                if up.status >= 300:
                    return None  # the real request fails the same way, with the server's own answer
                new = json.loads(await up.read())
        review = {
            "operation": operation,
            "subResource": api.subresource,
            "name": api.name or ((new or {}).get("metadata") or {}).get("name", ""),
            "namespace": api.namespace,
            "kind": {"group": api.group, "version": api.version, "kind": (new or old or {}).get("kind", "")},
            "resource": {"group": api.group, "version": api.version, "resource": api.resource},
            "userInfo": {"username": user.name, "groups": list(user.groups), "extra": {}},
        }
        denial = evaluate(policies, review, new, old)
        if denial is None:
            return None
        qualified = f"{api.resource}.{api.group}" if api.group else api.resource
        message = (
            f'{qualified} "{review["name"]}" is forbidden: ValidatingAdmissionPolicy '
            f"'{denial.policy}' with binding '{denial.binding}' denied request: {denial.message}"
        )
        return _status(denial.code, denial.reason, message)

    async def _serve(
        self, request: web.Request, api: ApiPath | None, commit: Callable[[int], None]
    ) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if request.method == "POST" and api is not None:
            if api.group == "authentication.k8s.io" and api.resource == "tokenreviews":
                return await self._token_review(request)
            if api.group == "authorization.k8s.io" and api.resource in _ACCESS_REVIEWS:
                return await self._access_review(request, api)
        if request.method == "GET":
            if path == "/api":
                return web.json_response(api_versions(request.host))
            if path == "/apis":
                return await self._group_list()
            segs = path.strip("/").split("/")
            if len(segs) == 2 and segs[0] == "apis" and segs[1] in EMULATED_GROUPS:
                kinds = EMULATED_GROUPS[segs[1]]
                return web.json_response(api_group(segs[1], [k.version for k in kinds]))
            if api is not None and api.is_discovery and api.group in EMULATED_GROUPS:
                return await self._resource_list(api)
            if path == "/openapi/v3":
                return await self._openapi_root()
            if path.startswith("/openapi/v3/") and not path.startswith(
                "/openapi/v3/apis/apiextensions.k8s.io"
            ):
                return await self._openapi_group_version(segs[2:])
        if api is not None and api.resource:
            kind = BY_PUBLIC.get((api.group, api.version, api.resource))
            if kind is not None:
                return await self._core(request, api, kind, commit)
            if api.group in EMULATED_GROUPS:
                return _status(404, "NotFound", "the server could not find the requested resource")
        return await self._proxy_raw(request, commit)

    # -- delegated authentication and authorization --------------------------------------------

    async def _token_review(self, request: web.Request) -> web.Response:
        review = await request.json()
        spec = review.get("spec") or {}
        token = str(spec.get("token") or "")
        user = user_from_token(token)
        review["status"] = {
            "authenticated": bool(token.strip()),
            "user": {"username": user.name, "groups": list(user.groups)} if token.strip() else {},
            "audiences": spec.get("audiences") or [],
        }
        return web.json_response(review, status=201)

    async def _access_review(self, request: web.Request, api: ApiPath) -> web.Response:
        """Subject, self-subject and local subject access reviews, answered by the stored RBAC policy."""
        review = await request.json()
        spec = review.get("spec") or {}
        if api.resource == "selfsubjectaccessreviews":
            user = user_from_header(request.headers.get("Authorization", ""))
        else:
            user = UserInfo(str(spec.get("user") or ""), tuple(str(g) for g in spec.get("groups") or []))
        attrs = _review_attributes(user, spec)
        if api.resource == "localsubjectaccessreviews" and attrs.namespace != api.namespace:
            return _status(
                400, "BadRequest", "spec.resourceAttributes.namespace must match the namespace of the request"
            )
        allowed = attrs.user.superuser or (await self.rbac.get()).allows(attrs)
        review["status"] = {"allowed": allowed, "reason": "" if allowed else "no RBAC rule allows it"}
        return web.json_response(review, status=201)

    # -- upstream ------------------------------------------------------------------------------

    async def _upstream(self, method: str, url: str | URL, **kwargs: Any) -> aiohttp.ClientResponse:
        """One request to the real server; an idempotent one is resent once if a pooled
        connection turns out to have been closed by the server before it answered."""
        assert self._session is not None
        attempts = 2 if method in _IDEMPOTENT else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._session.request(method, url, **kwargs)
            except aiohttp.ServerDisconnectedError:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    # -- discovery -----------------------------------------------------------------------------

    async def _get_json(self, path: str) -> tuple[int, Any]:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {FRONT_TOKEN}", "Accept": "application/json"}
        async with await self._upstream("GET", self.upstream + path, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, {"message": text}

    async def _group_list(self) -> web.Response:
        status, crds = await self._get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        if status != 200:
            return web.json_response(crds, status=status)
        listing = api_group_list(crds)
        listing["groups"] += await self.aggregator.groups()
        return web.json_response(listing)

    async def _resource_list(self, api: ApiPath) -> web.Response:
        kinds = [k for k in EMULATED_GROUPS[api.group] if k.version == api.version]
        if not kinds:
            return _status(404, "NotFound", "the server could not find the requested resource")
        status, private = await self._get_json(f"/apis/{kinds[0].private_group}/{api.version}")
        if status != 200:
            return web.json_response(private, status=status)
        return web.json_response(public_resource_list(kinds, private))

    async def _openapi_root(self) -> web.Response:
        status, upstream_root = await self._get_json("/openapi/v3")
        if status != 200:
            return web.json_response(upstream_root, status=status)
        status, crds = await self._get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        if status != 200:
            return web.json_response(crds, status=status)
        return web.json_response(openapi.root_document(upstream_root, openapi.served_kinds(crds)))

    async def _openapi_group_version(self, segs: list[str]) -> web.Response:
        if len(segs) == 2 and segs[0] == "api":
            group, version = "", segs[1]
        elif len(segs) == 3 and segs[0] == "apis":
            group, version = segs[1], segs[2]
        else:
            return _status(404, "NotFound", "the server could not find the requested resource")
        status, crds = await self._get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        if status != 200:
            return web.json_response(crds, status=status)
        doc = openapi.group_version_document(group, version, openapi.served_kinds(crds))
        if doc is None:
            return _status(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(doc)

    # -- plain proxy ---------------------------------------------------------------------------

    def _forward_headers(
        self, request: web.BaseRequest, content_type: str | None = None, *, as_front: bool = False
    ) -> dict[str, str]:
        """The client's headers for the server; ``as_front`` once the front has authorized the request
        itself (the stored core kinds: the server would see only their private coordinates)."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if as_front:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = f"Bearer {FRONT_TOKEN}"
        headers["Accept-Encoding"] = "identity"
        if content_type is not None:
            headers["Content-Type"] = content_type
        elif not any(k.lower() == "content-type" for k in headers):
            # The server reads a body without a type as JSON; say so, or the client library
            # would label the forwarded bytes application/octet-stream.
            headers["Content-Type"] = "application/json"
        return headers

    async def _proxy_raw(self, request: web.Request, commit: Callable[[int], None]) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        url = URL(self.upstream + request.raw_path, encoded=True)
        async with await self._upstream(
            request.method, url, data=body or None, headers=self._forward_headers(request)
        ) as up:
            return await self._stream(request, up, commit, None)

    async def _stream(
        self,
        request: web.Request,
        up: aiohttp.ClientResponse,
        commit: Callable[[int], None],
        transform: Callable[[bytes], bytes] | None,
    ) -> web.StreamResponse:
        """Relays ``up`` as it arrives; with ``transform``, line by line (watch event streams)."""
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for key, value in up.headers.items():
            if key.lower() not in _HOP_BY_HOP:
                resp.headers.add(key, value)
        commit(up.status)
        await resp.prepare(request)
        buffer = b""
        try:
            async for chunk in up.content.iter_any():
                if transform is None:
                    await resp.write(chunk)
                    continue
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                out = b"".join(transform(line) + b"\n" for line in lines if line.strip())
                if out:
                    await resp.write(out)
            if transform is not None and buffer.strip():
                await resp.write(transform(buffer) + b"\n")
            await resp.write_eof()
        except (aiohttp.ClientError, ConnectionError) as exc:
            # Headers are sent: end the stream early (clients re-watch), as a dropped connection would.
            log.info("stream for %s ended early: %s", request.path, exc)
        return resp

    # -- emulated core kinds -------------------------------------------------------------------

    async def _core(
        self, request: web.Request, api: ApiPath, kind: CoreKind, commit: Callable[[int], None]
    ) -> web.StreamResponse:
        assert self._session is not None
        private_path = _private(api, kind).render()
        query = request.rel_url.raw_query_string
        content_type = _media_type(request.headers.get("Content-Type", "")) or "application/json"
        body: bytes | None = None
        parsed: Any = None
        forward_type: str | None = None
        if request.method in ("POST", "PUT", "PATCH"):
            raw = await request.read()
            if "protobuf" in content_type:
                # The look-alike CRDs only read JSON (a protobuf body makes the server panic).
                try:
                    if kind.plural != "namespaces" or kind.group or request.method == "PATCH":
                        raise ProtobufError(
                            f"the devcluster front accepts JSON or YAML bodies for {kind.plural}"
                        )
                    raw = json.dumps(decode_namespace(raw)).encode()
                except ProtobufError as exc:
                    return _status(415, "UnsupportedMediaType", f"{exc}, not {content_type}")
                content_type = forward_type = "application/json"
            if request.method == "PATCH" and content_type == _SMP:
                return await self._strategic_patch(request, kind, private_path, raw)
            parsed = _parse_body(raw, content_type)
            whole = request.method in ("POST", "PUT")
            body = (
                raw if parsed is None else json.dumps(to_private(kind, parsed, whole_object=whole)).encode()
            )
        elif request.method == "DELETE":
            body = await request.read() or None  # DeleteOptions: preconditions, propagation
        url = URL(self.upstream + private_path + (f"?{query}" if query else ""), encoded=True)
        headers = self._forward_headers(request, forward_type, as_front=True)
        verb = api.verb(request.method, request.query)
        if (
            verb == "delete"
            and kind.plural == "namespaces"
            and not kind.group
            and "dryRun" not in request.query
        ):
            await self._empty_namespace(request, api.name)
        async with await self._upstream(request.method, url, data=body, headers=headers) as up:
            if verb == "watch" and up.status == 200:

                def translate_line(line: bytes) -> bytes:
                    return json.dumps(to_public(kind, json.loads(line))).encode()

                return await self._stream(request, up, commit, translate_line)
            status, payload, response_type = up.status, await up.read(), up.headers.get("Content-Type", "")
        if verb == "create" and status in (200, 201) and "dryRun" not in request.query:
            status, payload = await self._after_create(request, kind, api, parsed, status, payload)
        return _json_or_raw(kind, status, payload, response_type)

    async def _after_create(
        self, request: web.Request, kind: CoreKind, api: ApiPath, sent: Any, status: int, payload: bytes
    ) -> tuple[int, bytes]:
        """Status a real server keeps or sets on create, which the CRD status subresource drops."""
        if kind.plural == "namespaces" and not kind.group:
            new_status: Any = {"phase": "Active"}
        elif kind.status and isinstance(sent, dict) and sent.get("status"):
            new_status = sent["status"]
        else:
            return status, payload
        name = json.loads(payload).get("metadata", {}).get("name", api.name)
        target = _private(api, kind).model_copy(update={"name": name, "subresource": "status"})
        assert self._session is not None
        async with await self._upstream(
            "PATCH",
            self.upstream + target.render(),
            data=json.dumps({"status": new_status}).encode(),
            headers=self._forward_headers(request, "application/merge-patch+json", as_front=True),
        ) as up:
            if up.status != 200:
                log.warning("setting status after create of %s %s failed: %s", kind.kind, name, up.status)
                return status, payload
            return status, await up.read()

    async def _empty_namespace(self, request: web.Request, namespace: str) -> None:
        """What the namespace controller does: delete every namespaced object in it (the front then
        deletes the namespace at once, where a real one waits in Terminating for finalizers)."""
        status, crds = await self._get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        if status != 200:
            log.warning("cannot list CRDs to empty namespace %s: %s", namespace, status)
            return
        headers = self._forward_headers(request, as_front=True)
        headers.pop("Content-Type", None)
        for crd in crds.get("items", []):
            spec = crd.get("spec", {})
            served = [v["name"] for v in spec.get("versions", []) if v.get("served")]
            if spec.get("scope") != "Namespaced" or not served:
                continue
            where = f"namespaces/{quote(namespace, safe='')}/{spec['names']['plural']}"
            path = f"/apis/{spec['group']}/{served[0]}/{where}"
            async with await self._upstream("DELETE", self.upstream + path, headers=headers) as up:
                if up.status >= 300 and up.status != 404:
                    log.warning("emptying namespace %s: %s %s", namespace, path, up.status)

    async def _strategic_patch(
        self, request: web.Request, kind: CoreKind, private_path: str, raw: bytes
    ) -> web.StreamResponse:
        """GET, merge locally, PUT with the read resourceVersion; on conflict retried unless pinned."""
        assert self._session is not None
        try:
            patch = json.loads(raw)
        except ValueError as exc:
            return _status(400, "BadRequest", f"invalid strategic merge patch: {exc}")
        object_path = private_path.removesuffix("/status")
        query = {k: v for k, v in request.query.items() if k != "force"}
        pinned = isinstance(patch, dict) and bool((patch.get("metadata") or {}).get("resourceVersion"))
        headers = self._forward_headers(request, "application/json", as_front=True)
        for _ in range(_CONFLICT_RETRIES):
            async with await self._upstream("GET", self.upstream + object_path, headers=headers) as up:
                status, payload, ctype = up.status, await up.read(), up.headers.get("Content-Type", "")
            if status != 200:
                return _json_or_raw(kind, status, payload, ctype)
            current = json.loads(payload)
            try:
                merged = apply_strategic_merge(current, patch)
            except StrategicPatchError as exc:
                return _status(422, "Invalid", str(exc))
            merged["apiVersion"], merged["kind"] = kind.private_api_version, kind.kind
            async with await self._upstream(
                "PUT",
                self.upstream + private_path,
                params=query,
                data=json.dumps(merged).encode(),
                headers=headers,
            ) as up:
                status, payload, ctype = up.status, await up.read(), up.headers.get("Content-Type", "")
            if status != 409 or pinned:
                break
        return _json_or_raw(kind, status, payload, ctype)


def _changes_policy(api: ApiPath) -> bool:
    """Whether a write here can change what the RBAC store reads (its objects, their CRDs, a namespace)."""
    if api.group in (RBAC_GROUP, "apiextensions.k8s.io"):
        return True
    return not api.group and api.resource == "namespaces"


def _review_attributes(user: UserInfo, spec: dict[str, Any]) -> Attributes:
    """What an access review asks, in public coordinates (the server asks about the private ones)."""
    res = spec.get("resourceAttributes")
    if isinstance(res, dict):
        group, resource = str(res.get("group") or ""), str(res.get("resource") or "")
        kind = BY_PRIVATE.get((group, resource))
        if kind is not None:
            group, resource = kind.group, kind.plural
        return Attributes(
            user=user,
            verb=str(res.get("verb") or ""),
            group=group,
            resource=resource,
            subresource=str(res.get("subresource") or ""),
            namespace=str(res.get("namespace") or ""),
            name=str(res.get("name") or ""),
        )
    nonres = spec.get("nonResourceAttributes") or {}
    return Attributes(
        user=user,
        verb=str(nonres.get("verb") or ""),
        resource_request=False,
        path=str(nonres.get("path") or ""),
    )


def _private(api: ApiPath, kind: CoreKind) -> ApiPath:
    """Where the look-alike CRD serves ``api``."""
    return api.model_copy(update={"group": kind.private_group, "resource": kind.private_plural})


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    try:
        if content_type in _JSON_BODY_TYPES:
            return json.loads(raw)
        if content_type in _YAML_BODY_TYPES:
            return yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError):
        return None
    return None


def _json_or_raw(kind: CoreKind, status: int, payload: bytes, content_type: str) -> web.Response:
    if "json" in content_type:
        try:
            doc = json.loads(payload)
        except ValueError:
            pass
        else:
            return web.json_response(to_public(kind, doc), status=status)
    if "yaml" in content_type:
        try:
            doc = yaml.safe_load(payload)
        except yaml.YAMLError:
            pass
        else:
            text = yaml.safe_dump(to_public(kind, doc), sort_keys=False)
            return web.Response(text=text, status=status, content_type="application/yaml")
    return web.Response(body=payload, status=status, headers={"Content-Type": content_type or "text/plain"})


async def serve(
    host: str, port: int, front: Front, stop: asyncio.Event, tls: tuple[int, Path, Path] | None = None
) -> None:
    """Runs the front until ``stop`` is set; in-flight handlers are cancelled when clients go away.

    ``tls`` (port, certificate, key) also serves the same application over https."""
    runner = web.AppRunner(front.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, shutdown_timeout=1.0).start()
        if tls is not None:
            tls_port, cert, key = tls
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            await web.TCPSite(runner, host, tls_port, ssl_context=context, shutdown_timeout=1.0).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.devcluster.front", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the real apiextensions-apiserver's https URL")
    parser.add_argument("--request-log", type=Path, default=os.environ.get(REQUEST_LOG_ENV) or None)
    parser.add_argument("--tls-port", type=int, help="also serve https here (needs --tls-cert, --tls-key)")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--proxy-client-cert", type=Path, help="client certificate for aggregated servers")
    parser.add_argument("--proxy-client-key", type=Path)
    parser.add_argument(
        "--fault-injection", action="store_true", help=f"serve {FAULTS_PATH} (tests only: fails requests)"
    )
    args = parser.parse_args(argv)
    tls = (args.tls_port, args.tls_cert, args.tls_key) if args.tls_port else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s front %(levelname)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        proxy = (args.proxy_client_cert, args.proxy_client_key) if args.proxy_client_cert else None
        faults = Faults() if args.fault_injection else None
        front = Front(args.upstream, args.request_log, proxy, faults)
        await serve(args.host, args.port, front, stop, tls)

    asyncio.run(run())


if __name__ == "__main__":
    main()
