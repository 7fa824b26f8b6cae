"""The synchronous face (node agent, CLI, SDK): one pooled, thread-safe urllib3 connection pool."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Unpack

import urllib3

from vmsandbox.kube import wire
from vmsandbox.kube.clientbase import ClientBase, delete_body, list_params
from vmsandbox.kube.errors import ApiError

WATCH_READ_SLACK = 30.0


@dataclass(eq=False, repr=False, kw_only=True)
class Client(ClientBase):
    """Every method raises :class:`ApiError`; safe to share between threads."""

    pool_size: int = 32
    _pool: urllib3.PoolManager = field(init=False)

    def __post_init__(self) -> None:
        tls: dict[str, Any] = {}
        if self.connection.tls:
            tls["ssl_context"] = self.connection.ssl_context()
            if self.connection.insecure:
                tls.update(cert_reqs="CERT_NONE", assert_hostname=False)
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=self.pool_size, retries=False, **tls)

    def close(self) -> None:
        self._pool.clear()

    def request(self, method: str, path: str, **options: Unpack[wire.Options]) -> dict[str, Any]:
        return self.exchange(method, path, **options)[1]

    def exchange(self, method: str, path: str, **options: Unpack[wire.Options]) -> tuple[int, dict[str, Any]]:
        """As :meth:`request`, with the status of the success (an apply's 201 says it created)."""
        req = wire.request(method, path, **options)
        timeout = urllib3.Timeout(total=options.get("timeout") or self.timeout)
        try:
            resp = self._send(req, timeout, stream=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise wire.unreachable(req, exc) from None
        return resp.status, wire.decode(req, resp.status, resp.headers, resp.data.decode("utf-8", "replace"))

    def _send(self, req: wire.Request, timeout: urllib3.Timeout, *, stream: bool) -> urllib3.BaseHTTPResponse:
        return self._pool.request(
            req.method,
            self.url(req),
            body=req.body,
            headers=self.headers(req),
            timeout=timeout,
            preload_content=not stream,
            redirect=False,
        )

    def get(self, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        return self.request("GET", path, timeout=timeout)

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def list_objects(self, path: str, *, label_selector: str = "") -> dict[str, Any]:
        return self.request("GET", path, params=list_params(label_selector))

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body=body)

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: refused with a conflict when ``body``'s resourceVersion is stale."""
        return self.request("PUT", path, body=body)

    def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request("PATCH", path, body=ops, content_type=wire.JSON_PATCH)

    def merge_patch(
        self, path: str, body: Mapping[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        return self.request("PATCH", path, body=body, content_type=wire.MERGE_PATCH, timeout=timeout)

    def delete(self, path: str, *, precondition_uid: str | None = None) -> dict[str, Any]:
        return self.request("DELETE", path, body=delete_body(precondition_uid))

    def watch(
        self,
        path: str,
        resource_version: str,
        timeout_seconds: int,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> Generator[dict[str, Any], None, None]:
        """Raw watch events (``type``, ``object``) from ``resource_version`` until the server
        ends the stream; a refusal (410 Gone included) raises :class:`ApiError`. A watch left
        before its end closes its connection (its unread rest must not reach the pool)."""
        params = wire.watch_params(resource_version, timeout_seconds, label_selector, field_selector)
        req = wire.Request("GET", path, params=params)
        timeout = urllib3.Timeout(connect=self.timeout, read=timeout_seconds + WATCH_READ_SLACK)
        try:
            resp = self._send(req, timeout, stream=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise wire.unreachable(req, exc) from None
        finished = False
        try:
            if resp.status >= 300:
                wire.decode(req, resp.status, resp.headers, resp.read().decode("utf-8", "replace"))
            yield from _events(req, resp)
            finished = True
        finally:
            if not finished:
                resp.close()
            resp.release_conn()


def _events(req: wire.Request, resp: urllib3.BaseHTTPResponse) -> Iterator[dict[str, Any]]:
    pending = b""
    try:
        for chunk in resp.stream(65536, decode_content=True):
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if (event := wire.watch_event(line)) is not None:
                    yield event
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise wire.unreachable(req, exc) from None
    if (event := wire.watch_event(pending)) is not None:
        yield event
