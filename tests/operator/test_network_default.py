"""The operator records the network mode in force at placement: the spec's, else the cluster's default."""

from __future__ import annotations

import pytest

from tests.operator.factories import sandbox_obj
from tests.operator.harness import (
    FakeAgents,
    create_sandbox,
    leading_operator,
    operator_config,
    scheduled,
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
            obj = wait_for(name, lambda n=name: scheduled(kube, ns, n))  # type: ignore[misc]
            assert obj["status"]["network"] == {"mode": mode}, name
