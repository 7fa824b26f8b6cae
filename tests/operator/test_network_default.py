"""The operator records the network mode in force at placement: the spec's, else the cluster's default."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.factories import sandbox_obj
from tests.operator.harness import (
    FakeAgents,
    create_sandbox,
    get_sandbox,
    leading_operator,
    operator_config,
    phase,
    wait_for,
)
from vmsandbox.api import NetworkMode
from vmsandbox.devcluster.cluster import LocalCluster

pytestmark = pytest.mark.kube


def test_mode_in_force_is_recorded_at_placement(
    kube: LocalCluster, kube_namespace: str, agents: FakeAgents
) -> None:
    ns = kube_namespace
    agents.add("net-n1", vcpus=4, memory=4096)
    config = operator_config(ns, default_network_mode=NetworkMode.OPEN)
    with leading_operator(config, kube.kubeconfig_path):
        create_sandbox(kube, ns, sandbox_obj("defaulted"))
        create_sandbox(kube, ns, sandbox_obj("asked", network={"mode": "none"}))
        for name, mode in (("defaulted", "open"), ("asked", "none")):
            obj = wait_for(name, lambda n=name: _scheduled(kube, ns, n))  # type: ignore[misc]
            assert obj["status"]["network"] == {"mode": mode}, name


def _scheduled(kube: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    obj = get_sandbox(kube, ns, name)
    return obj if phase(obj) == "Scheduled" else None
