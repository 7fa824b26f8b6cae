"""Discovery documents the standalone CRD server lacks: /api, /api/v1, the /apis group list.

They are assembled from what the real server does serve (its CRD list and the look-alike
CRDs' resource lists), so verbs, short names and subresources are the server's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from vmsandbox.devcluster.corekinds import CORE_KINDS, CoreKind, is_private_group

_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key putting versions in Kubernetes' preference order (v2 > v1 > v1beta2 > v1alpha1 > others)."""
    m = _VERSION.match(version)
    if not m:
        return (3, 0, 0, version)
    major, stage, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -major, -minor, "")


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_entry(group: str, versions: Iterable[str]) -> dict[str, Any]:
    ordered = sorted(set(versions), key=version_priority)
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group(group: str, versions: Iterable[str]) -> dict[str, Any]:
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def api_group_list(crd_list: dict[str, Any]) -> dict[str, Any]:
    """The /apis group list: apiextensions, the emulated core groups, and every public CRD group."""
    groups: dict[str, set[str]] = {"apiextensions.k8s.io": {"v1"}}
    for kind in CORE_KINDS:
        if kind.group:
            groups.setdefault(kind.group, set()).add(kind.version)
    for crd in crd_list.get("items", []):
        spec = crd.get("spec", {})
        group = spec.get("group", "")
        if not group or is_private_group(group):
            continue
        served = [v["name"] for v in spec.get("versions", []) if v.get("served")]
        if served:
            groups.setdefault(group, set()).update(served)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_entry(g, vs) for g, vs in sorted(groups.items())],
    }


def public_resource_list(kinds: Iterable[CoreKind], private_list: dict[str, Any]) -> dict[str, Any]:
    """A look-alike group's APIResourceList, relabelled with the public group/version."""
    kinds = list(kinds)
    by_private = {k.private_plural: k for k in kinds}
    resources = []
    for resource in private_list.get("resources", []):
        plural, _, sub = resource.get("name", "").partition("/")
        kind = by_private.get(plural)
        if kind is None:
            continue
        renamed = {**resource, "name": f"{kind.plural}/{sub}" if sub else kind.plural}
        if not sub:
            renamed["singularName"] = kind.kind.lower()
        resources.append(renamed)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": kinds[0].public_api_version,
        "resources": resources,
    }
