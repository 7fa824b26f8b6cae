"""Cloud Hypervisor's own OpenAPI document, read as a contract for request bodies.

The file is not part of the project: its path comes from ``VMSANDBOX_CH_OPENAPI`` or defaults
to ``<repo>/../shared/specs/cloud-hypervisor/cloud-hypervisor.yaml``. PyYAML reads the
response-code keys as integers, so every key is turned into a string on load. Bodies are
checked with a Draft 7 validator over ``components`` (the spec's ``format`` values such as
``uint8`` are not enforced and ``default`` values are not applied, as with any JSON Schema
validator).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema

import yaml

ENV_SPEC = "VMSANDBOX_CH_OPENAPI"
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SPEC = REPO_ROOT.parent / "shared" / "specs" / "cloud-hypervisor" / "cloud-hypervisor.yaml"


def spec_path() -> Path:
    return Path(os.environ.get(ENV_SPEC) or DEFAULT_SPEC)


def _stringify_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(key): _stringify_keys(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_stringify_keys(item) for item in node]
    return node


@lru_cache(maxsize=4)
def load_spec(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as handle:
        spec: dict[str, Any] = _stringify_keys(yaml.load(handle, Loader=loader))
    return spec


def body_schema_name(spec: dict[str, Any], api_path: str, method: str) -> str | None:
    """The ``components.schemas`` name the spec gives the request body of ``api_path``."""
    operation = spec.get("paths", {}).get(api_path, {}).get(method.lower())
    if not operation:
        return None
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    prefix = "#/components/schemas/"
    return ref[len(prefix) :] if ref.startswith(prefix) else None


def validator(spec: dict[str, Any], schema_name: str) -> jsonschema.Draft7Validator:
    import jsonschema

    wrapper = {"components": spec["components"], "$ref": f"#/components/schemas/{schema_name}"}
    return jsonschema.Draft7Validator(wrapper)


def violations(spec: dict[str, Any], schema_name: str, body: Any) -> list[str]:
    """Every way ``body`` breaks the schema, as ``<json path>: <message>`` lines."""
    found = []
    for error in sorted(validator(spec, schema_name).iter_errors(body), key=lambda e: list(e.path)):
        where = "/".join(str(part) for part in error.path) or "<root>"
        found.append(f"{where}: {error.message}")
    return found
