"""Renders the CustomResourceDefinition from the models, so the API has one source of truth.

pydantic emits JSON Schema with ``$ref``s, ``anyOf`` for optionals and titles; Kubernetes wants
a structural schema: everything inline, one type per node, no nulls. This module converts one
into the other and adds what only a CRD can say (printer columns, selectable fields).

Every description ends with the field's default and bounds, written from the same constraints
the schema enforces, so ``kubectl explain`` (which prints neither) states them and they never
drift from what the server checks.
"""

from __future__ import annotations

from typing import Any

import yaml

from vmsandbox.api import constants as c
from vmsandbox.api.pool import VMSandboxPool, VMSandboxPoolSpec, VMSandboxPoolStatus
from vmsandbox.api.resource import VMSandbox
from vmsandbox.api.spec import SPEC_VALIDATIONS, VMSandboxSpec
from vmsandbox.api.status import VMSandboxStatus

_DROP = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of {len(branches)} types structurally: {node}")
        merged = {**branches[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and value is False:
            continue
        out[key] = (
            value if key in ("default", "enum", "x-kubernetes-validations") else _structural(value, defs)
        )
    return out


def _literal(value: Any) -> str:
    if value == "":
        return '"" (empty)'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _span(what: str, low: Any, high: Any, unit: str = "") -> str | None:
    if low is not None and high is not None:
        return f"{what}: {low} to {high}{unit}."
    if low is not None:
        return f"{what}: at least {low}{unit}."
    if high is not None:
        return f"{what}: at most {high}{unit}."
    return None


def facts(node: dict[str, Any]) -> list[str]:
    """Sentences stating a schema node's default and bounds."""
    out: list[str] = []
    default = node.get("default")
    if default is not None and not isinstance(default, (dict, list)):
        out.append(f"Default: {_literal(default)}.")
    spans = (
        _span("Range", node.get("minimum"), node.get("maximum")),
        _span("Length", node.get("minLength"), node.get("maxLength"), " characters"),
        _span("Items", node.get("minItems"), node.get("maxItems")),
    )
    return out + [span for span in spans if span]


def _document(node: dict[str, Any]) -> None:
    """Append :func:`facts` to the description of every property below ``node``, in place."""
    for prop in node.get("properties", {}).values():
        if prop.get("description"):
            prop["description"] = " ".join([prop["description"], *facts(prop)])
        _document(prop)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _document(node[key])


def model_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    _document(schema)
    return schema


def _root_schema(
    model: type[Any], spec_model: type[Any], status_model: type[Any], spec_rules: list[Any] | None
) -> dict[str, Any]:
    """The object's schema: spec and status described by ``model``.

    A CRD may say nothing about ``metadata`` but its type, and API servers publish their own
    descriptions of ``apiVersion``, ``kind`` and ``metadata`` for every kind.
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    docs = {name: raw["properties"][name]["description"] for name in ("spec", "status")}
    spec = model_schema(spec_model)
    if spec_rules:
        spec["x-kubernetes-validations"] = spec_rules
    status = model_schema(status_model)
    return {
        "type": "object",
        "description": raw["description"],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {**spec, "description": docs["spec"]},
            "status": {**status, "description": docs["status"]},
        },
    }


def _crd(
    kind: str, plural: str, singular: str, short_names: tuple[str, ...], version: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{c.GROUP}"},
        "spec": {
            "group": c.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(c.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [{"name": c.VERSION, "served": True, "storage": True, **version}],
        },
    }


def render() -> dict[str, Any]:
    """The VMSandbox CRD."""
    version = {
        "subresources": {"status": {}},
        "additionalPrinterColumns": [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Node", "type": "string", "jsonPath": ".status.nodeName"},
            {"name": "Hypervisor", "type": "string", "jsonPath": ".status.hypervisor"},
            {"name": "Restarts", "type": "integer", "jsonPath": ".status.restartCount"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        ],
        # Clusters >= 1.31; older ones select on the vmsandbox.io/node label instead.
        "selectableFields": [{"jsonPath": ".status.nodeName"}, {"jsonPath": ".status.phase"}],
        "schema": {
            "openAPIV3Schema": _root_schema(VMSandbox, VMSandboxSpec, VMSandboxStatus, SPEC_VALIDATIONS)
        },
    }
    return _crd(c.KIND, c.PLURAL, c.SINGULAR, c.SHORT_NAMES, version)


def render_pool() -> dict[str, Any]:
    """The VMSandboxPool CRD: a scale subresource, so ``kubectl scale`` and an HPA can size it."""
    version = {
        "subresources": {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        "additionalPrinterColumns": [
            {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        "schema": {
            "openAPIV3Schema": _root_schema(VMSandboxPool, VMSandboxPoolSpec, VMSandboxPoolStatus, None)
        },
    }
    return _crd(c.POOL_KIND, c.POOL_PLURAL, c.POOL_SINGULAR, c.POOL_SHORT_NAMES, version)


#: Every CRD by kind, and the file it is committed as in crds/ and charts/vmsandbox/crds/.
RENDERERS = {c.KIND: render, c.POOL_KIND: render_pool}
FILES = {c.KIND: f"{c.PLURAL}.yaml", c.POOL_KIND: f"{c.POOL_PLURAL}.yaml"}


HEADER = "# Generated from vmsandbox.api by `python -m vmsandbox.api crd`; do not edit.\n"


def render_yaml(kind: str = c.KIND) -> str:
    return HEADER + yaml.safe_dump(RENDERERS[kind](), sort_keys=False, width=100)
