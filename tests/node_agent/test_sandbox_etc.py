"""A sandbox's containers get the node's resolvers, their hostname and an /etc/hosts naming it.

Process backend, real agent and API server; the agent's network plumbing in a test-made "node"
namespace whose "world" serves DNS on 10.99.0.53 (``public.test`` -> 198.18.0.2).
"""

from __future__ import annotations

import pytest

from tests.network.conftest import DNS, PUBLIC
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, unique, wait_for

pytestmark = pytest.mark.kube

SCRIPT = " ; ".join(
    [
        "echo '== resolv'",
        "cat /etc/resolv.conf",
        "echo '== hostname'",
        "cat /etc/hostname",
        "hostname",
        "echo '== hosts'",
        "cat /etc/hosts",
        "echo '== lookup'",
        # stdout and stderr reach the log through two pipes, whose lines may interleave in any
        # order; the failing lookup's complaint must land in its own section.
        "nslookup public.test 2>&1",
        "echo '== done'",
        "sleep 600",
    ]
)


def _sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:]
            out[current] = ""
        elif current:
            out[current] += line + "\n"
    return out


def _output(agent: AgentProcess, cluster: Cluster, name: str) -> dict[str, str]:
    def done() -> str | None:
        text = agent.get(f"/logs/{cluster.namespace}/{name}").text
        return text if "== done" in text else None

    text = wait_for("the container's report", done)
    return _sections(text)


def test_containers_get_the_resolvers_hostname_and_hosts(
    net_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = net_agent()
    image = registry.busybox
    online, offline = unique("dns"), unique("nodns")
    for name, network in ((online, {}), (offline, {"mode": "none"})):
        spec = {"image": image, "command": ["sh", "-c", SCRIPT], "hypervisor": "process", "network": network}
        cluster.create_sandbox(name, spec, node=agent.node)
    for name in (online, offline):
        cluster.wait_phase(name, "Running", timeout=90)

    ip = cluster.status(online)["network"]["ip"]
    report = _output(agent, cluster, online)
    assert report["resolv"] == f"nameserver {DNS}\n", report
    assert report["hostname"] == f"{online}\n{online}\n", report
    assert "127.0.0.1\tlocalhost" in report["hosts"] and f"{ip}\t{online}" in report["hosts"], report
    assert PUBLIC in report["lookup"], report

    # No network: no resolver either (not the node's own, which the sandbox could not reach).
    report = _output(agent, cluster, offline)
    assert report["resolv"] == "", report
    assert report["hostname"] == f"{offline}\n{offline}\n", report
    assert f"127.0.1.1\t{offline}" in report["hosts"], report
    assert PUBLIC not in report["lookup"], report
