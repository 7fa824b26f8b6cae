"""A real node agent process on a fake Node of the local control plane (process backend, no registry)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.node_agent import support
from vmsandbox.devcluster.cluster import LocalCluster


@contextmanager
def running_agent(
    kube: LocalCluster, namespace: str, **settings: str
) -> Iterator[tuple[support.Cluster, str, Path]]:
    """(cluster helper for ``namespace``, node, agent work dir); ``settings``: VMSANDBOX_AGENT_* values."""
    node = f"sec-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="sec", dir="/tmp"))  # short: AF_UNIX path limit
    with kube.api_client() as api_client:
        cluster = support.Cluster(api_client=api_client, namespace=namespace)
        cluster.create_node(node)
        env = support.process_agent_env(node, namespace, kube.kubeconfig_path, workdir, **settings)
        agent = support.AgentProcess(node=node, workdir=workdir, env=env, cluster=cluster)
        try:
            agent.start()
            yield cluster, node, workdir
        finally:
            agent.stop()
            kube.http("DELETE", f"/api/v1/nodes/{node}")
            shutil.rmtree(workdir, ignore_errors=True)
