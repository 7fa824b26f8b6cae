"""Rewriting bodies between a core kind's public shape and its look-alike CRD's shape."""

from __future__ import annotations

import re
from typing import Any

from vmsandbox.devcluster.corekinds import CoreKind


def to_private(kind: CoreKind, body: Any, *, whole_object: bool = False) -> Any:
    """A client's object of ``kind`` as the look-alike CRD expects it (only its apiVersion differs).

    With ``whole_object`` (create/replace bodies), a missing apiVersion and kind are filled in:
    built-in endpoints take them from the URL, CRD endpoints insist on them.
    """
    if (
        whole_object
        and isinstance(body, dict)
        and body.get("kind", kind.kind) == kind.kind
        and body.get("apiVersion", kind.public_api_version) == kind.public_api_version
    ):
        return {**body, "apiVersion": kind.private_api_version, "kind": kind.kind}
    if (
        isinstance(body, dict)
        and body.get("apiVersion") == kind.public_api_version
        and body.get("kind") in (kind.kind, f"{kind.kind}List")
    ):
        return {**body, "apiVersion": kind.private_api_version}
    return body


def to_public(kind: CoreKind, body: Any) -> Any:
    """A server response (object, list, table, watch event or Status) in the public shape."""
    if isinstance(body, dict):
        if body.get("kind") == "Status" and isinstance(body.get("message"), str):
            return _public_status(kind, body)
        return {k: _public_value(kind, k, v) for k, v in body.items()}
    if isinstance(body, list):
        return [to_public(kind, v) for v in body]
    return body


def _public_value(kind: CoreKind, key: str, value: Any) -> Any:
    if key == "apiVersion" and value == kind.private_api_version:
        return kind.public_api_version
    return to_public(kind, value)


def _public_status(kind: CoreKind, status: dict[str, Any]) -> dict[str, Any]:
    """Error messages name the resource as a real server would (``nodes "n1" not found``)."""
    public_resource = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
    pattern = re.compile(rf"\b{re.escape(kind.private_plural)}\.{re.escape(kind.private_group)}\b")
    out = {k: to_public(kind, v) for k, v in status.items() if k != "message"}
    out["message"] = pattern.sub(public_resource, status["message"]).replace(
        kind.private_api_version, kind.public_api_version
    )
    details = out.get("details")
    if isinstance(details, dict) and details.get("group") == kind.private_group:
        out["details"] = {**details, "group": kind.group, "kind": kind.plural}
        if not kind.group:
            out["details"].pop("group")
    return out
