"""The SDK: the README's example run as written (with a real operator scheduling and a real agent
running the sample image), and the asyncio client."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import OperatorProcess, running_operator
from tests.node_agent.conftest import allow_process_backend
from tests.node_agent.support import Cluster, MakeAgent, Registry, unique, wait_for
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.sample_image import SAMPLE_LAYOUT, SAMPLES_DIR, build_busybox_layout
from vmsandbox.sdk import AsyncClient, Client, SandboxError

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {
    "allowed_hypervisors": "process,cloud-hypervisor",
    "agent_alive_seconds": 6,
    "node_lost_grace_seconds": 30,
    "sweep_seconds": 0.5,
}


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- sdk-example -->\n```python\n(.*?)```", text, re.S)
    assert found, "the README lost its SDK example"
    return found.group(1)


@pytest.fixture
def operator(kube: LocalCluster, kube_namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(kube, kube_namespace, tmp_path, **SETTINGS) as op:
        yield op


@pytest.fixture
def sample_image() -> Path:
    if (
        not (SAMPLE_LAYOUT / "index.json").exists()
        or "1.36" not in (SAMPLE_LAYOUT / "index.json").read_text()
    ):
        build_busybox_layout(SAMPLE_LAYOUT, "1.36")
    return SAMPLE_LAYOUT


def _why(stderr: str, agent_logs: str, operator: OperatorProcess, kube: LocalCluster) -> str:
    """What a failed run leaves to go on: the example's error, where the sandbox got to (its
    status says whether it was ever placed), and both components' logs."""
    with Client("default", str(kube.kubeconfig_path)) as client:
        try:
            status = client.sandbox("sdk-demo").get().get("status")
        except SandboxError as exc:
            status = f"(unreadable: {exc})"
    operator_logs = operator.log_path.read_text(errors="replace")
    return f"{stderr}\nstatus: {status}\nagent:\n{agent_logs[-3000:]}\noperator:\n{operator_logs[-3000:]}"


@pytest.mark.kube
def test_the_readme_example_runs_as_written(
    operator: OperatorProcess, make_agent: MakeAgent, kube: LocalCluster, sample_image: Path, tmp_path: Path
) -> None:
    agent = make_agent(VMSANDBOX_AGENT_ALLOWED_LAYOUT_DIRS=str(SAMPLES_DIR))
    allow_process_backend(kube, "default")  # as `vmsandbox dev`, which the example presumes, does
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig_path), "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env
        )
        assert done.returncode == 0, _why(done.stderr, agent.logs(), operator, kube)
        assert "stdout b'1\\n'" in done.stdout and "stdout b'3\\n'" in done.stdout
        assert "'greeting.txt'" in done.stdout
    finally:
        with Client("default", str(kube.kubeconfig_path)) as client:
            client.sandbox("sdk-demo").delete(wait=True)


@pytest.mark.kube
def test_async_client_and_typed_errors(
    operator: OperatorProcess, make_agent: MakeAgent, cluster: Cluster, kube: LocalCluster, registry: Registry
) -> None:
    make_agent()
    name = unique("aio")

    async def scenario() -> None:
        async with AsyncClient(cluster.namespace, str(kube.kubeconfig_path)) as client:
            box = await client.create(name, image=registry.busybox)
            result = await box.run(["sh", "-c", "echo async; exit 5"])
            assert (result.stdout, result.exit_code) == (b"async\n", 5)
            pieces = [item async for item in box.stream(["sh", "-c", "echo a; echo b >&2"])]
            assert sorted(pieces) == [("stderr", b"b\n"), ("stdout", b"a\n")]
            with pytest.raises(
                SandboxError, match=rf"read: sandbox {cluster.namespace}/{name}: .*No such file"
            ):
                await box.read("/missing")
            await box.delete()

    asyncio.run(scenario())
    with Client(cluster.namespace, str(kube.kubeconfig_path)) as client:
        done = client.create(unique("done"), image=registry.busybox, command=["true"], wait=False)
        cluster.wait_phase(done.name, "Succeeded", timeout=90)
        with pytest.raises(SandboxError, match=r"wait: sandbox .*: is Succeeded, not Running"):
            done.wait_running(timeout=90)
        with pytest.raises(SandboxError, match=r"exec: sandbox .*is Succeeded, not Running"):
            done.run(["true"])
        done.delete()
        wait_for(
            "sandboxes gone",
            lambda: (
                not cluster.custom.list_namespaced_custom_object(
                    "vmsandbox.io", "v1alpha1", cluster.namespace, "vmsandboxes"
                )["items"]
            ),
            timeout=60,
        )
