"""The agent sets up each sandbox's network before the VM, reports it, meters it and frees it.

The agent itself talks to the local control plane from the machine's namespace; its sandbox
network plumbing runs in a test-made "node" namespace (``networkNamespace``), linked to a
test-made "world" (see tests/network/conftest.py). Nothing is configured outside them.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from tests.network.conftest import (
    GATEWAY6,
    METADATA,
    PREFIX6,
    PRIVATE,
    PUBLIC,
    PUBLIC6,
    PUBLIC6_2,
    PUBLIC_2,
    SUBNET,
    ULA,
    Topology,
    reach_probe,
)
from tests.node_agent.support import Cluster, MakeAgent, Registry, unique, wait_for

pytestmark = pytest.mark.kube

SCRIPT = " ; ".join(
    [
        *(reach_probe(a) for a in (PUBLIC, PUBLIC_2, PRIVATE, METADATA, PUBLIC6, PUBLIC6_2, ULA)),
        "echo probes done",
        "sleep 600",
    ]
)


def test_network_set_up_reported_metered_and_freed(
    net_agent: MakeAgent, cluster: Cluster, registry: Registry, topo: Topology
) -> None:
    agent = net_agent()
    name = unique("net")
    spec = registry.sandbox(
        ["sh", "-c", SCRIPT],
        hypervisor="process",
        network={"egress": {"allow": [f"{PRIVATE}/32"], "deny": [f"{PUBLIC_2}/32", f"{PUBLIC6_2}/128"]}},
    )
    cluster.create_sandbox(name, spec, node=agent.node)
    status = cluster.wait_phase(name, "Running", timeout=60)
    network = status["network"]
    assert network["mode"] == "restricted"
    assert ipaddress.IPv4Address(network["ip"]) in ipaddress.IPv4Network(SUBNET)
    assert network["gateway"] == "10.250.7.1" and network["prefixLength"] == 24
    assert re.fullmatch(r"02:76:73(:[0-9a-f]{2}){3}", network["mac"])
    assert ipaddress.IPv6Address(network["ip6"]) in ipaddress.IPv6Network(PREFIX6), network
    assert network["gateway6"] == GATEWAY6 and network["prefixLength6"] == 64
    assert network["allow"] == [f"{PRIVATE}/32"] and network["deny"] == [f"{PUBLIC_2}/32", f"{PUBLIC6_2}/128"]
    assert status["bootTimings"]["network"] >= 0

    logs = wait_for(
        "the probes' output",
        lambda: (lambda t: t if "probes done" in t else None)(
            agent.get(f"/logs/{cluster.namespace}/{name}").text
        ),
    )
    assert f"reached {PUBLIC}" in logs and f"reached {PRIVATE}" in logs, logs
    assert f"blocked {PUBLIC_2}" in logs and f"blocked {METADATA}" in logs, logs
    assert f"reached {PUBLIC6}" in logs, logs
    assert f"blocked {PUBLIC6_2}" in logs and f"blocked {ULA}" in logs, logs

    metrics = agent.get("/metrics").text
    drops = re.search(
        rf'vmsandbox_agent_sandbox_network_policy_drops_total{{name="{name}",namespace="[^"]+"}} (\S+)',
        metrics,
    )
    assert drops is not None and float(drops.group(1)) >= 2, metrics[-2000:]
    assert re.search(rf'vmsandbox_agent_sandbox_network_bytes_total{{direction="rx",name="{name}"', metrics)

    # Killed and restarted, the agent adopts the sandbox and keeps its address and plumbing.
    agent.kill()
    agent.start()
    leases = agent.state_dir / "network" / "leases"
    assert [p.name for p in leases.iterdir()] == [network["ip"]]
    assert len(topo.sandbox_netns()) == 1
    assert f"{network['ip6']} : jump s" in topo.node_ruleset(), "the IPv6 maps are rebuilt too"

    cluster.delete(name)
    cluster.wait_gone(name, timeout=60)
    assert list(leases.iterdir()) == [] and topo.sandbox_netns() == [], "freed after delete"
    assert not re.search(r"\bs[0-9a-f]{12}_", topo.node_ruleset())
