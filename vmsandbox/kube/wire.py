"""What a request to the API server looks like and what its answer means: one implementation
under the synchronous and the asynchronous client, so both raise the same :class:`ApiError`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack
from urllib.parse import urlencode

from vmsandbox.kube.errors import ApiError

JSON = "application/json"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TIMEOUT = 30.0
MESSAGE_LIMIT = 500


class Options(TypedDict, total=False):
    """What a call may say besides its method and path (both faces take the same)."""

    body: Any
    content_type: str
    params: Mapping[str, str] | None
    #: Seconds for the whole exchange (the synchronous face; the asynchronous one has its own).
    timeout: float | None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None
    content_type: str = JSON
    params: Mapping[str, str] | None = None

    def url(self, server: str) -> str:
        query = f"?{urlencode(self.params)}" if self.params else ""
        return f"{server}{self.path}{query}"

    def headers(self, credentials: Mapping[str, str], user_agent: str) -> dict[str, str]:
        headers = {**credentials, "User-Agent": user_agent, "Accept": JSON}
        if self.body is not None:
            headers["Content-Type"] = self.content_type
        return headers


def request(method: str, path: str, **options: Unpack[Options]) -> Request:
    body = options.get("body")
    data = None if body is None else json.dumps(body).encode()
    return Request(method, path, data, options.get("content_type", JSON), options.get("params"))


def retry_after(headers: Mapping[str, str]) -> float:
    raw = headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else 0.0
    except ValueError:
        return 0.0


def decode(req: Request, status: int, headers: Mapping[str, str], text: str) -> dict[str, Any]:
    """The answer's object, or the :class:`ApiError` its status means."""
    if status >= 300:
        raise ApiError(req.method, req.path, status, _message(text), retry_after=retry_after(headers))
    if not text:
        return {}
    try:
        result = json.loads(text)
    except ValueError:
        raise ApiError(req.method, req.path, status, f"not JSON: {text[:80]!r}") from None
    return result if isinstance(result, dict) else {"value": result}


def unreachable(req: Request, exc: BaseException) -> ApiError:
    """The error for a request that got no answer (connection refused, reset, timed out)."""
    return ApiError(req.method, req.path, 0, f"no answer: {type(exc).__name__}: {exc}")


def _message(text: str) -> str:
    try:
        body = json.loads(text)
        message = body.get("message", text) if isinstance(body, dict) else text
    except ValueError:
        message = text
    return str(message)[:MESSAGE_LIMIT]


def watch_params(
    resource_version: str, timeout_seconds: int, label_selector: str = "", field_selector: str = ""
) -> dict[str, str]:
    params = {
        "watch": "true",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(timeout_seconds),
    }
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params


def watch_event(line: bytes) -> dict[str, Any] | None:
    """One line of a watch stream as its event (``type``, ``object``); None for a blank line."""
    if not line.strip():
        return None
    event = json.loads(line)
    return event if isinstance(event, dict) else None
