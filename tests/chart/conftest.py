"""Fixtures for the chart tests: the real helm, and renders cached per value file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import Helm, get_helm

_RENDERS: dict[tuple[str, ...], list[dict[str, Any]]] = {}


@pytest.fixture(scope="session")
def helm() -> Helm:
    return get_helm()


@pytest.fixture(scope="session")
def render(helm: Helm) -> Callable[..., list[dict[str, Any]]]:
    """``render(*value_files)``: the chart's objects for those values (rendered once per session)."""

    def _render(*values: Path) -> list[dict[str, Any]]:
        key = tuple(str(v) for v in values)
        if key not in _RENDERS:
            _RENDERS[key] = helm.render(values)
        return _RENDERS[key]

    return _render
