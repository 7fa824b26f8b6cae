"""agent.sandboxCIDR: the agent joins the node's network namespace, with NET_ADMIN, and gets the subnet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.chart.helm import VALUES_DIR, one

Render = Callable[..., list[dict[str, Any]]]


def test_sandbox_network_runs_the_agent_on_the_node_network(render: Render) -> None:
    daemonset = one(render(VALUES_DIR / "sandbox-network.yaml"), "DaemonSet", "-agent")
    spec = daemonset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VMSANDBOX_AGENT_SANDBOX_CIDR"] == "10.250.0.0/24"
    assert env["VMSANDBOX_AGENT_SANDBOX_CIDR6"] == "fd12:3456:789a::/64"
    caps = container["securityContext"]["capabilities"]
    assert "NET_ADMIN" in caps["add"] and caps["drop"] == ["ALL"]


def test_no_sandbox_network_by_default(render: Render) -> None:
    daemonset = one(render(), "DaemonSet", "-agent")
    spec = daemonset["spec"]["template"]["spec"]
    assert not spec.get("hostNetwork")
    names = [e["name"] for e in spec["containers"][0]["env"]]
    assert "VMSANDBOX_AGENT_SANDBOX_CIDR" not in names
    assert "VMSANDBOX_AGENT_SANDBOX_CIDR6" not in names, "the agent derives its prefix itself"
