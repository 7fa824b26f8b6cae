"""A small asyncio Kubernetes client (aiohttp) for the operator's own reads and writes.

kopf watches; this client writes what kopf's per-handler ``patch`` cannot express: JSON patches
guarded by a resourceVersion test (the scheduling decision is a compare-and-swap), Leases for
leader election, Events, and fresh LISTs when a replica becomes the leader. Credentials come
from a kubeconfig file or the in-cluster service account, through the official client's loader.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from vmsandbox.api.constants import GROUP, PLURAL, VERSION
from vmsandbox.errors import VMSandboxError

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(VMSandboxError):
    """A request the API server refused; ``status`` is the HTTP status."""

    step = "kubernetes api"

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        self.status = status
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: {status} {message}")

    @property
    def conflict(self) -> bool:
        """A lost compare-and-swap: stale resourceVersion (409) or a failed JSON-patch test (422)."""
        return self.status in (409, 422)

    @property
    def not_found(self) -> bool:
        return self.status == 404


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @classmethod
    def load(cls, kubeconfig: Path | None = None) -> Connection:
        """From ``kubeconfig`` (or ``$KUBECONFIG``/~/.kube/config), else the in-cluster service account."""
        from kubernetes import config as kconfig
        from kubernetes.client import Configuration

        cfg = Configuration()
        try:
            if kubeconfig is not None:
                kconfig.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
            else:
                try:
                    kconfig.load_incluster_config(client_configuration=cfg)
                except kconfig.ConfigException:
                    kconfig.load_kube_config(client_configuration=cfg)
        except (kconfig.ConfigException, OSError) as exc:
            raise VMSandboxError(str(exc), step="kubeconfig") from None
        raw = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
        token = raw.split(" ", 1)[1] if raw and " " in raw else raw
        return cls(
            server=str(cfg.host).rstrip("/"),
            token=token or None,
            ca_file=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            insecure=not cfg.verify_ssl,
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def sandbox_path(namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{PLURAL}"
    if name is not None:
        path += f"/{quote(name)}"
    if sub is not None:
        path += f"/{sub}"
    return path


def lease_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases"
    return f"{path}/{quote(name)}" if name is not None else path


def node_path(name: str | None = None) -> str:
    return "/api/v1/nodes" + (f"/{quote(name)}" if name is not None else "")


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/events"


class KubeClient:
    """One pooled aiohttp session; every method raises :class:`ApiError` on a non-2xx answer."""

    def __init__(self, connection: Connection, *, user_agent: str = "vmsandbox-operator") -> None:
        self.connection = connection
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=None,
                headers={**self.connection.headers(), "User-Agent": self._user_agent},
                connector=aiohttp.TCPConnector(ssl=self.connection.ssl_context(), limit=64),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        session = self._open()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        try:
            async with session.request(
                method, self.connection.server + path, data=data, headers=headers, params=params
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(method, path, 0, f"no answer: {exc!r}") from None
        if status >= 300:
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise ApiError(method, path, status, str(message)[:500])
        return json.loads(text) if text else {}

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def list_objects(self, path: str, *, label_selector: str | None = None) -> dict[str, Any]:
        params = {"labelSelector": label_selector} if label_selector else None
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=ops, content_type=JSON_PATCH)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str, *, precondition_uid: str | None = None) -> dict[str, Any]:
        body = {"preconditions": {"uid": precondition_uid}} if precondition_uid else None
        return await self.request("DELETE", path, body=body)
