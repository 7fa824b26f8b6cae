"""Helpers for tests where the API server fails the agent: an agent with a user of its own (so
faults and blocks at the front can single out its requests), and what a sandbox left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, unique
from tests.security.tenant import bind
from vmsandbox.devcluster import LocalCluster

#: An agent making its API requests as a user of its own, and that user.
OwnAgent = tuple[AgentProcess, str]
SANDBOX_PATH = "/apis/vmsandbox.io/v1alpha1/namespaces/{ns}/vmsandboxes/{name}"


def own_user_agent(
    kube: LocalCluster, make_agent: MakeAgent, request: pytest.FixtureRequest, **env: str
) -> OwnAgent:
    """An agent whose API requests are made as a user of its own (with any rights)."""
    user = f"system:serviceaccount:vmsandbox-system:{unique('agent')}"
    binding = unique("resilience-admin")
    bind(kube, "", "ClusterRole", "cluster-admin", [{"kind": "User", "name": user}], name=binding)
    request.addfinalizer(
        lambda: kube.http("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}")
    )
    request.addfinalizer(kube.clear_faults)
    agent = make_agent(VMSANDBOX_AGENT_KUBECONFIG=str(kube.kubeconfig_for(user)), **env)
    return agent, user


def sandbox_path(cluster: Cluster, name: str) -> str:
    return SANDBOX_PATH.format(ns=cluster.namespace, name=name)


def record(agent: AgentProcess, uid: str) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads((agent.state_dir / "sandboxes" / uid / "record.json").read_text())
    except (OSError, ValueError):
        return None
    return loaded


def runs(agent: AgentProcess, uid: str) -> int:
    """How many times the sandbox's command started (it prints one ``run`` line per start)."""
    log = agent.state_dir / "sandboxes" / uid / "container.log"
    text = "".join(p.read_text(errors="replace") for p in sorted(log.parent.glob("container.log*")))
    return sum(1 for line in text.splitlines() if "run-marker" in line)


def teardowns(agent: AgentProcess, name: str) -> list[str]:
    """The reasons the agent gave for each VM it tore down for ``name``."""
    return [
        str(line.get("msg"))
        for line in agent.log_lines()
        if line.get("name") == name and str(line.get("msg", "")).startswith("VM torn down")
    ]


def log_dir(agent: AgentProcess, uid: str) -> Path:
    return agent.state_dir / "sandboxes" / uid
