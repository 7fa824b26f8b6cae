"""Offline validation against the Kubernetes API's own JSON schemas (PyPI ``kubernetes-validate``).

The package's ``validate()`` reloads the multi-megabyte definitions file on every call; here
each (version, kind) validator is built once from the same files with the same rules (strict
schemas, Draft 2020-12, ``_definitions.json`` as the reference registry).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest

from tests.chart.helm import missing

#: Oldest and newest Kubernetes minor versions the chart supports (Chart.yaml kubeVersion >= 1.31).
VERSIONS = ("1.31.0", "1.35.0")
#: Kinds from add-ons, not the Kubernetes API: checked by their own tests instead.
ADDON_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def _kv() -> Any:
    try:
        import kubernetes_validate.utils
    except ImportError:
        missing("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kubernetes_validate.utils


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> Any:
    import jsonschema
    from referencing import Registry, Resource

    kv = _kv()
    if version not in kv.all_versions():
        pytest.fail(f"kubernetes-validate has no schemas for Kubernetes {version}: {kv.all_versions()}")
    # rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1 (the package's file naming).
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = kv.schema_contents(f"{directory}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        pytest.fail(f"Kubernetes {version} has no {kind} in {api_version}")
    definitions = kv.schema_contents(f"{directory}/_definitions.json", version)
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict[str, Any], version: str) -> None:
    """Strict: unknown fields fail too, so a mis-indented key is caught, not silently dropped."""
    if (obj.get("apiVersion"), obj.get("kind")) in ADDON_KINDS:
        return
    errors = sorted(_validator(version, obj["apiVersion"], obj["kind"]).iter_errors(obj), key=str)
    if errors:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors[:5]]
        pytest.fail(
            f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}:\n" + "\n".join(lines)
        )
