"""OpenAPI v3 documents for CRD groups and the emulated core groups.

The standalone server publishes OpenAPI v3 for its own group only and has no ``/openapi/v2``.
kubectl reads the v3 root to learn, per kind, whether the server validates fields itself
(the ``fieldValidation`` parameter of the PATCH operation tagged with the kind); without an
entry it falls back to v2 and refuses every manifest. The front therefore publishes a v3
document per group/version with each kind's operations and schema: validation itself stays
the real server's. ``kubectl explain`` reads the same documents; as kube-apiserver does for
every custom resource, each schema's ``apiVersion``, ``kind`` and ``metadata`` carry the
standard descriptions (a CRD may not describe ``metadata`` itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from vmsandbox.devcluster.corekinds import CORE_KINDS, is_private_group

_QUERY_PARAMS = ("fieldValidation", "fieldManager", "dryRun")

#: What kube-apiserver says of the fields every object has, whatever its CRD says.
TYPE_META = {
    "apiVersion": {
        "type": "string",
        "description": "The versioned schema of this object, as group/version; the server may convert "
        "between the versions it serves.",
    },
    "kind": {"type": "string", "description": "The REST resource this object represents, in CamelCase."},
    "metadata": {
        "type": "object",
        "description": "Standard object metadata: name, namespace, labels, annotations, finalizers, and "
        "what the server sets (uid, resourceVersion, generation, timestamps).",
    },
}


class KindDoc(BaseModel, frozen=True):
    """What a document needs to know about one kind."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    schema_: dict[str, Any]


def served_kinds(crd_list: dict[str, Any]) -> list[KindDoc]:
    """Every kind clients see: the public CRDs' served versions, then the emulated core kinds."""
    kinds = []
    for crd in crd_list.get("items", []):
        spec = crd.get("spec", {})
        if is_private_group(spec.get("group", "")):
            continue
        for version in spec.get("versions", []):
            if not version.get("served"):
                continue
            kinds.append(
                KindDoc(
                    group=spec["group"],
                    version=version["name"],
                    kind=spec["names"]["kind"],
                    plural=spec["names"]["plural"],
                    namespaced=spec.get("scope") == "Namespaced",
                    schema_=(version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"},
                )
            )
    for core in CORE_KINDS:
        crd_version = core.crd()["spec"]["versions"][0]
        kinds.append(
            KindDoc(
                group=core.group,
                version=core.version,
                kind=core.kind,
                plural=core.plural,
                namespaced=core.namespaced,
                schema_=crd_version["schema"]["openAPIV3Schema"],
            )
        )
    return kinds


def gv_key(group: str, version: str) -> str:
    """The v3 root's key for a group/version (``api/v1`` for the core group)."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def root_document(upstream_root: dict[str, Any], kinds: Iterable[KindDoc]) -> dict[str, Any]:
    paths = {k: v for k, v in upstream_root.get("paths", {}).items() if "devcluster.vmsandbox.io" not in k}
    for kind in kinds:
        key = gv_key(kind.group, kind.version)
        paths.setdefault(key, {"serverRelativeURL": f"/openapi/v3/{key}"})
    return {"paths": paths}


def group_version_document(group: str, version: str, kinds: Iterable[KindDoc]) -> dict[str, Any] | None:
    """The v3 document of one group/version, or None when nothing is served there."""
    selected = [k for k in kinds if k.group == group and k.version == version]
    if not selected:
        return None
    prefix = f"/{gv_key(group, version)}"
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for kind in selected:
        gvk = {"group": group, "version": version, "kind": kind.kind}
        ref = {"$ref": f"#/components/schemas/{_schema_name(kind)}"}
        schemas[_schema_name(kind)] = {
            **with_type_meta(kind.schema_),
            "x-kubernetes-group-version-kind": [gvk],
        }
        collection = (
            f"{prefix}/namespaces/{{namespace}}/{kind.plural}"
            if kind.namespaced
            else f"{prefix}/{kind.plural}"
        )
        paths[collection] = {
            "get": _operation("list", gvk, ref),
            "post": _operation("create", gvk, ref),
        }
        item = {verb: _operation(verb, gvk, ref) for verb in ("get", "put", "patch", "delete")}
        paths[f"{collection}/{{name}}"] = item
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (devcluster)", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def with_type_meta(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the standard apiVersion, kind and metadata properties (only where it is an object)."""
    if "properties" not in schema:
        return schema
    return {**schema, "properties": {**schema["properties"], **TYPE_META}}


def _schema_name(kind: KindDoc) -> str:
    return (
        ".".join([*reversed(kind.group.split(".")), kind.version, kind.kind])
        if kind.group
        else f"io.k8s.api.core.{kind.version}.{kind.kind}"
    )


def _operation(action: str, gvk: dict[str, str], ref: dict[str, str]) -> dict[str, Any]:
    return {
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "parameters": [{"name": name, "in": "query", "schema": {"type": "string"}} for name in _QUERY_PARAMS],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
    }
