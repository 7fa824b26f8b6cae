"""Fixtures for the tenant-boundary tests: the node agent tests' image, registry and agents, a real
operator, a tenant (a user allowed only create/get/list/delete of vmsandboxes in one namespace),
and the chart fixtures (real helm, cached renders) for tests that evaluate the chart's objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.conftest import helm, render
from tests.e2e.processes import OperatorProcess, running_operator
from tests.node_agent.conftest import *  # noqa: F403  (its fixtures, used by name)
from tests.node_agent.support import Cluster, unique
from tests.security.support import OPERATOR_SETTINGS, Tenant
from tests.security.tenant import grant_tenant
from vmsandbox.devcluster.cluster import LocalCluster

__all__ = ["helm", "render"]  # fixtures, used by name


@pytest.fixture
def operator(kube: LocalCluster, kube_namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(kube, kube_namespace, tmp_path, **OPERATOR_SETTINGS) as op:
        yield op


@pytest.fixture
def tenant(kube: LocalCluster, cluster: Cluster) -> Iterator[Tenant]:
    """``tenant-<id>``: create/get/list/delete vmsandboxes in the test's namespace, nothing else."""
    user = unique("tenant")
    grant_tenant(kube, cluster.namespace, user)
    with kube.api_client(user) as api_client:
        yield Tenant(
            user=user, kubeconfig=kube.kubeconfig_for(user), cluster=Cluster(api_client, cluster.namespace)
        )
