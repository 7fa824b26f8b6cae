"""A real node agent process on a fake Node of the local control plane (process backend, no registry)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.chart.helm import REPO
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
        env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("VMSANDBOX_AGENT_")}
        env.update(
            {
                "NODE_NAME": node,
                "POD_NAMESPACE": namespace,
                "PYTHONPATH": str(REPO),
                "VMSANDBOX_AGENT_KUBECONFIG": str(kube.kubeconfig_path),
                "VMSANDBOX_AGENT_STATE_DIR": str(workdir / "state"),
                "VMSANDBOX_AGENT_RUNTIME_ROOT": str(workdir / "run"),
                "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "process",
                "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "process",
                "VMSANDBOX_AGENT_GUEST_IMAGE_DIR": str(support.fake_guest_image(workdir / "guest")),
                "VMSANDBOX_AGENT_INSECURE_REGISTRIES": "127.0.0.1:9",
                "VMSANDBOX_AGENT_LISTEN_ADDRESS": "127.0.0.1",
                "VMSANDBOX_AGENT_PORT": "0",
                "VMSANDBOX_AGENT_LEASE_RENEW_SECONDS": "1",
                **{f"VMSANDBOX_AGENT_{k.upper()}": v for k, v in settings.items()},
            }
        )
        agent = support.AgentProcess(node=node, workdir=workdir, env=env, cluster=cluster)
        try:
            agent.start()
            yield cluster, node, workdir
        finally:
            agent.stop()
            kube.http("DELETE", f"/api/v1/nodes/{node}")
            shutil.rmtree(workdir, ignore_errors=True)
