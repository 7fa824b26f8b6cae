"""The API path into a QEMU (TCG) guest: exec and files through the local control plane's
aggregator and the operator's aggregated server, to an agent whose sandbox runs in a real VM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.exec.test_api_path import ApiPath, _through_api, api_path, round_trip
from tests.exec.test_cli import cli
from tests.node_agent.support import Cluster, MakeAgent, Registry, unique
from tests.qemu.conftest import guest_image, qemu_binary, vmm_user
from vmsandbox.devcluster.cluster import LocalCluster

__all__ = ["api_path", "guest_image", "qemu_binary", "vmm_user"]  # fixtures, used by name
pytestmark = [pytest.mark.kube, pytest.mark.vm]


@pytest.mark.timeout(900)
def test_exec_and_files_in_a_qemu_guest_through_the_api_server(
    api_path: ApiPath,
    make_agent: MakeAgent,
    cluster: Cluster,
    registry: Registry,
    kube: LocalCluster,
    guest_image: Path,
    tmp_path: Path,
) -> None:
    agent = make_agent(
        VMSANDBOX_AGENT_ALLOWED_HYPERVISORS="process,qemu",
        VMSANDBOX_AGENT_GUEST_IMAGE_DIR=str(guest_image),
        VMSANDBOX_AGENT_ALLOW_TCG="true",
    )
    name = unique("apiq")
    image = f"{registry.host}/test/busybox:latest"
    spec = {"image": image, "command": ["sleep", "3600"], "hypervisor": "qemu"}
    cluster.create_sandbox(name, spec, node=agent.node)
    status = cluster.wait_phase(name, "Running", "Failed", timeout=480)
    assert status["phase"] == "Running", f"{status}\nagent log:\n{agent.logs()[-4000:]}"
    ns = cluster.namespace
    since = len(kube.requests_made())

    done = cli(kube, "exec", "-n", ns, name, "--", "sh", "-c", "uname -n; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, f"{name}\n".encode(), b"err\n")
    killed = cli(kube, "exec", "-n", ns, name, "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 137
    piped = b"".join(b"%d\n" % i for i in range(20_000))
    fed = cli(kube, "exec", "-i", "-n", ns, name, "--", "cat", input=piped)
    assert (fed.returncode, fed.stdout) == (0, piped), fed.stderr
    assert _through_api(kube, since, "exec", 3) == [101, 101, 101]

    round_trip(kube, ns, name, "/tmp/in.bin", os.urandom(4 * 1024 * 1024 + 3), tmp_path)
    assert _through_api(kube, since, "files", 2) == [200, 200]
    cluster.delete(name)
    cluster.wait_gone(name, timeout=120)
