"""Offline validation against the Kubernetes API's own JSON schemas (PyPI ``kubernetes-validate``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.helm import missing

#: Oldest and newest Kubernetes minor versions the chart supports (Chart.yaml kubeVersion >= 1.31).
VERSIONS = ("1.31.0", "1.35.0")
#: Kinds from add-ons, not the Kubernetes API: checked by their own tests instead.
ADDON_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kubernetes_validate


def validate(obj: dict[str, Any], version: str) -> None:
    """Strict: unknown fields fail too, so a mis-indented key is caught, not silently dropped."""
    kv = validator()
    if (obj.get("apiVersion"), obj.get("kind")) in ADDON_KINDS:
        return
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(
            f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {path}: {exc.message}"
        )
