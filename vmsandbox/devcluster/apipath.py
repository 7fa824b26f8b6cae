"""Parsing Kubernetes REST paths into their coordinates, and naming the request verb."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from pydantic import BaseModel

#: The front's own health endpoint (outside every Kubernetes path).
HEALTH_PATH = "/_devcluster/health"
#: Subresources a namespace itself has; anything else after /namespaces/<ns>/ is a resource.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


class ApiPath(BaseModel, frozen=True):
    """Where a request points: group/version, then optionally namespace, resource, name, subresource."""

    group: str
    version: str
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""

    @property
    def is_discovery(self) -> bool:
        return not self.resource

    def verb(self, method: str, query: Mapping[str, str]) -> str:
        """The Kubernetes verb RBAC would check for this request."""
        method = method.upper()
        if not self.resource:
            return "get"
        if method in ("GET", "HEAD"):
            if query.get("watch", "").lower() in ("true", "1"):
                return "watch"
            return "get" if self.name else "list"
        if method == "DELETE":
            return "delete" if self.name else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())

    def render(self) -> str:
        """The URL path for these coordinates (legacy core group under /api)."""
        parts = ["api", self.version] if not self.group else ["apis", self.group, self.version]
        if self.namespace:
            parts += ["namespaces", self.namespace]
        for piece in (self.resource, self.name, self.subresource):
            if piece:
                parts.append(piece)
        return "/" + "/".join(quote(p, safe="") for p in parts)


def parse_api_path(path: str) -> ApiPath | None:
    """Coordinates of a resource or discovery path, or None for anything else (/version, /livez...)."""
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 2 and segs[0] == "api":
        group, version, rest = "", segs[1], segs[2:]
    elif len(segs) >= 3 and segs[0] == "apis":
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    namespace = ""
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (group == "" and len(rest) == 3 and rest[2] in _NAMESPACE_SUBRESOURCES)
    ):
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    subresource = "/".join(rest[2:])
    return ApiPath(
        group=group,
        version=version,
        namespace=namespace,
        resource=resource,
        name=name,
        subresource=subresource,
    )
