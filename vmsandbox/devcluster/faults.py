"""Injected API failures, for tests of what clients do when the API server says no or not now.

Off unless the front is started with ``--fault-injection``. A superuser then posts rules to
``/_devcluster/faults``: each makes the next ``count`` requests (all of them while ``count`` is
null) that match its method, path pattern and user fail with its status, before the front
looks at them. ``DELETE`` clears every rule, ``GET`` lists them with what is left of each.
"""

from __future__ import annotations

import itertools
import re
import threading

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

FAULTS_PATH = "/_devcluster/faults"

_REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


class FaultRule(BaseModel):
    method: str | None = None
    #: A regular expression searched for in the request path.
    path: str | None = None
    user: str | None = None
    status: int = Field(default=500, ge=400, le=599)
    #: How many matching requests fail; None: every one until the rules are cleared.
    count: int | None = Field(default=1, ge=1)
    retry_after: int | None = Field(default=None, ge=0, alias="retryAfter")
    id: int = 0
    hits: int = 0

    model_config = {"populate_by_name": True}

    @field_validator("path")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    def matches(self, method: str, path: str, user: str) -> bool:
        return (
            (self.method is None or self.method.upper() == method.upper())
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.user is None or self.user == user)
        )

    def response(self) -> web.Response:
        reason = _REASONS.get(self.status, "InternalError")
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": f"injected fault {self.id}",
            "reason": reason,
            "code": self.status,
        }
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return web.json_response(body, status=self.status, headers=headers)


class Faults:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def take(self, method: str, path: str, user: str) -> FaultRule | None:
        """The first rule matching this request, with one use of it spent."""
        if path == FAULTS_PATH:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, user):
                    rule.hits += 1
                    if rule.count is not None and rule.hits >= rule.count:
                        self._rules.remove(rule)
                    return rule
        return None

    async def serve(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            rule = FaultRule.model_validate(await request.json())
            with self._lock:
                rule.id = next(self._ids)
                self._rules.append(rule)
            return web.json_response(rule.model_dump(by_alias=True), status=201)
        if request.method == "DELETE":
            with self._lock:
                self._rules.clear()
            return web.json_response({"rules": []})
        with self._lock:
            return web.json_response({"rules": [r.model_dump(by_alias=True) for r in self._rules]})
