"""What both node agent benchmarks stand on: the local control plane, a loopback registry holding
busybox, a Node and a ``vmsandbox-agent`` process whose VMs are the Cloud Hypervisor stand-in.

Imported after :func:`baseline.use_tree`, so it builds the rig of whichever tree is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baseline import baseline_tree, measure

from tests.node_agent.support import (
    AgentProcess,
    Cluster,
    Registry,
    build_busybox_layout,
    fake_guest_image,
    free_port,
    wait_for,
)
from vmsandbox.devcluster import LocalCluster

NODE = "bench-node"


@dataclass
class Rig:
    kube: LocalCluster
    api_client: Any
    cluster: Cluster
    agent: AgentProcess
    image: str
    registry: Registry
    #: The rig's scratch directory (removed with it), for a measurement's own files.
    work: Path
    node: str = NODE

    def wait_root_empty(self, timeout: float) -> None:
        """Until the agent's runtime root holds no sandbox (dot-entries are the runtime's own)."""
        root = self.agent.runtime_root
        assert root is not None
        wait_for(
            "runtime root empty",
            lambda: not [p for p in root.iterdir() if not p.name.startswith(".")],
            timeout=timeout,
            interval=1,
        )


@contextmanager
def agent_rig(
    prefix: str, namespace: str, env: dict[str, str] | None = None, *, labels: dict[str, str] | None = None
) -> Iterator[Rig]:
    """The rig, torn down (agent, registry, files) however the measurement ends; ``labels``: the
    namespace's."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    registry: Registry | None = None
    agent: AgentProcess | None = None
    try:
        with LocalCluster() as kube, kube.api_client() as api_client:
            layout = build_busybox_layout(work / "busybox")
            (work / "registry").mkdir()
            registry = Registry(root=work / "registry", port=free_port())
            registry.start()
            image = registry.push(layout, "latest", "bench/busybox:latest")
            guest = fake_guest_image(work / "guest")
            metadata = {"name": namespace, "labels": labels or {}}
            kube.http("POST", "/api/v1/namespaces", json={"metadata": metadata})
            cluster = Cluster(api_client=api_client, namespace=namespace)
            cluster.create_node(NODE)
            from tests.node_agent.conftest import agent_env

            (work / "agent").mkdir()
            agent_vars = agent_env(
                node=NODE,
                namespace=namespace,
                kube=kube,
                workdir=work / "agent",
                registry=registry,
                guest_image_dir=guest,
            )
            agent_vars["VMSANDBOX_AGENT_DEFAULT_HYPERVISOR"] = "cloud-hypervisor"
            agent_vars.update(env or {})
            agent = AgentProcess(node=NODE, workdir=work / "agent", env=agent_vars, cluster=cluster)
            agent.start()
            yield Rig(kube, api_client, cluster, agent, image, registry, work)
    finally:
        if agent is not None:
            agent.stop()
            if hasattr(agent, "release_cgroups"):  # an older tree's agents share one parent
                agent.release_cgroups()
        if registry is not None:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``parser``'s arguments with ``--against`` and the hidden ``--measure`` both agent
    benchmarks take; exits 2 unless run as root, which running containers with crun/runc needs."""
    parser.add_argument("--against", default="main", help="old code: where HEAD forked from this ref")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        name = Path(sys.argv[0]).name
        print(f"bench/{name} runs containers with crun/runc and needs root", file=sys.stderr)
        raise SystemExit(2)
    return args


def old_and_new(script: Path, new: Path, against: str, args: list[str]) -> dict[str, Any]:
    """``script --measure ARGS`` against the tree at ``against`` (old), then ``new``; each
    result also printed to stderr as it lands."""
    results: dict[str, Any] = {}
    with baseline_tree(against) as old:
        for label, tree in (("old", old), ("new", new)):
            results[label] = measure(script, tree, args)
            print(f"{label}: {json.dumps(results[label])}", file=sys.stderr, flush=True)
    return results
