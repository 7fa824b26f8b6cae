"""The operator tests' stand-in agents: Nodes with renewed Leases, closed and purged after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.operator.harness import FakeAgents, purge
from vmsandbox.devcluster.cluster import LocalCluster


@pytest.fixture
def agents(kube: LocalCluster, kube_namespace: str) -> Iterator[FakeAgents]:
    fake = FakeAgents(kube, kube_namespace)
    yield fake
    fake.close()
    purge(kube, kube_namespace)
