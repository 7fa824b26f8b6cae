"""Fixtures: the busybox image and loopback registry (per session), and per test a Node, a short
workspace and a ``vmsandbox-agent`` subprocess, with a leak check when the test ends."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tools
from tests.leaks import pids_mentioning, processes_mentioning
from tests.network import conftest as network_world
from tests.network.conftest import Topology
from tests.node_agent.resilience import OwnAgent, own_user_agent
from tests.node_agent.support import (
    STANDIN_DIR,
    VMM_CGROUP_PARENT_ENV,
    AgentProcess,
    Cluster,
    MakeAgent,
    Registry,
    build_busybox_layout,
    containers_left,
    fake_guest_image,
    force_cleanup,
    free_port,
    network_agent,
    scratch_dir,
    unique,
    wait_for,
)
from vmsandbox.api.constants import PROCESS_BACKEND_ALLOWED, PROCESS_BACKEND_LABEL
from vmsandbox.devcluster import LocalCluster

TOOLS = ("skopeo", "umoci", "unshare", "debugfs", "mkfs.ext4")

#: The fixtures other test directories take over with ``from tests.node_agent.conftest import *``.
__all__ = [
    "busybox_layout",
    "cluster",
    "guest_image_dir",
    "make_agent",
    "node_agent_tools",
    "registry",
    "session_dir",
    "workdir",
]


@pytest.fixture(scope="session")
def node_agent_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not Path("/usr/bin/docker-registry").exists():
        missing.append("docker-registry")
    if not Path("/bin/busybox").exists():
        missing.append("busybox-static")
    if missing:
        tools.missing(f"node agent tests need {', '.join(missing)} (Debian packages)")
    if os.geteuid() != 0:
        tools.missing("node agent tests run containers with the process backend, which needs root")


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    with scratch_dir("nat") as path:
        yield path


@pytest.fixture(scope="session")
def busybox_layout(node_agent_tools: None, session_dir: Path) -> Path:
    return build_busybox_layout(session_dir / "busybox")


@pytest.fixture(scope="session")
def registry(busybox_layout: Path, session_dir: Path) -> Iterator[Registry]:
    root = session_dir / "registry"
    root.mkdir()
    reg = Registry(root=root, port=free_port())
    reg.start()
    try:
        reg.push(busybox_layout, "latest", "test/busybox:latest")
        reg.push(busybox_layout, "nocmd", "test/busybox:nocmd")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def guest_image_dir(session_dir: Path) -> Path:
    return fake_guest_image(session_dir / "guest")


def allow_process_backend(kube: LocalCluster, namespace: str) -> None:
    patch = {"metadata": {"labels": {PROCESS_BACKEND_LABEL: PROCESS_BACKEND_ALLOWED}}}
    headers = {"Content-Type": "application/merge-patch+json"}
    resp = kube.http("PATCH", f"/api/v1/namespaces/{namespace}", json=patch, headers=headers)
    assert resp.status_code == 200, resp.text


@pytest.fixture
def cluster(kube: LocalCluster, kube_namespace: str) -> Iterator[Cluster]:
    """The test's namespace, where an admin has allowed the process backend (no VM)."""
    allow_process_backend(kube, kube_namespace)
    with kube.api_client() as api_client:
        yield Cluster(api_client=api_client, namespace=kube_namespace)


@pytest.fixture(params=["process", "cloud-hypervisor"])
def hypervisor(request: pytest.FixtureRequest) -> str:
    """The backends a whole sandbox's life is tested on: none (a process) and the (stand-in) VMM."""
    return str(request.param)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with scratch_dir("na") as path:
        yield path


def agent_env(
    *, node: str, namespace: str, kube: LocalCluster, workdir: Path, registry: Registry, guest_image_dir: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMSANDBOX_AGENT_", "CH_STANDIN_"))}
    (workdir / "tmp").mkdir(exist_ok=True)
    env.update(
        {
            "NODE_NAME": node,
            "POD_NAMESPACE": namespace,
            "PATH": f"{STANDIN_DIR}{os.pathsep}{env.get('PATH', '')}",
            "TMPDIR": str(workdir / "tmp"),
            "VMSANDBOX_VMM_USER": "root",  # the stand-in's emulated guest needs root
            "VMSANDBOX_AGENT_KUBECONFIG": str(kube.kubeconfig_path),
            "VMSANDBOX_AGENT_STATE_DIR": str(workdir / "state"),
            "VMSANDBOX_AGENT_RUNTIME_ROOT": str(workdir / "run"),
            "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "process,cloud-hypervisor",
            "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "process",
            "VMSANDBOX_AGENT_GUEST_IMAGE_DIR": str(guest_image_dir),
            "VMSANDBOX_AGENT_INSECURE_REGISTRIES": registry.host,
            "VMSANDBOX_AGENT_LISTEN_ADDRESS": "127.0.0.1",
            "VMSANDBOX_AGENT_PORT": "0",
            "VMSANDBOX_AGENT_LEASE_RENEW_SECONDS": "2",
            "VMSANDBOX_AGENT_ORPHAN_GRACE_SECONDS": "2",
            "VMSANDBOX_AGENT_RESTART_BACKOFF_SECONDS": "1",
            "VMSANDBOX_AGENT_POLL_INTERVAL_SECONDS": "0.5",
            "VMSANDBOX_AGENT_LOG_LEVEL": "DEBUG",
            # Each node's VM cgroups under a parent of its own, as on machines of their own: two
            # agents here may both hold a VM of one sandbox (rescheduled after a node loss), and
            # its container id, which names the VM's cgroup, is the same on both.
            VMM_CGROUP_PARENT_ENV: f"vmsandbox.slice/{node}",
            # The agent admits only what its capacity holds; the tests run more sandboxes than
            # this machine has CPUs (the process backend's "VMs" are processes).
            "VMSANDBOX_AGENT_CAPACITY_VCPUS": "64",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p
            ),
        }
    )
    return env


@pytest.fixture
def make_agent(
    kube: LocalCluster,
    cluster: Cluster,
    workdir: Path,
    registry: Registry,
    guest_image_dir: Path,
) -> Iterator[MakeAgent]:
    """``make_agent(start=True, **env)``: a Node and an agent for it; torn down and leak-checked after."""
    agents: list[AgentProcess] = []

    def make(start: bool = True, node: str | None = None, **extra_env: str) -> AgentProcess:
        node = node or unique("node")
        cluster.create_node(node)
        directory = workdir / f"a{len(agents)}"
        directory.mkdir()
        env = agent_env(
            node=node,
            namespace=cluster.namespace,
            kube=kube,
            workdir=directory,
            registry=registry,
            guest_image_dir=guest_image_dir,
        )
        env.update(extra_env)
        agent = AgentProcess(node=node, workdir=directory, env=env, cluster=cluster)
        agents.append(agent)
        if start:
            agent.start()
        return agent

    yield make
    failures = []
    for agent in agents:
        if not agent.alive() and agent.starts:
            agent.start(wait_ready=False)
        # Delete every sandbox this test made, so the agent tears down what it runs.
        for item in cluster.custom.list_namespaced_custom_object(
            "vmsandbox.io", "v1alpha1", cluster.namespace, "vmsandboxes"
        )["items"]:
            cluster.delete(item["metadata"]["name"])
    for agent in agents:
        try:
            wait_for(
                f"agent on {agent.node} to tear everything down",
                lambda a=agent: not containers_left(a.runtime_root),  # type: ignore[misc]
                timeout=30,
            )
        except AssertionError as exc:
            failures.append(f"{exc}: {containers_left(agent.runtime_root)}\n{agent.logs()[-4000:]}")
        agent.stop()
        force_cleanup(agent.runtime_root)
        if left := agent.release_cgroups():
            failures.append(f"VM cgroups left on {agent.node}: {left}")
    # A killed stand-in VMM's guest is stopped by the stand-in's watchdog shortly after.
    with contextlib.suppress(AssertionError):
        wait_for(
            "processes under the workdir to exit", lambda: not processes_mentioning(str(workdir)), timeout=20
        )
    leaked = processes_mentioning(str(workdir))
    for pid in pids_mentioning(str(workdir)):
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    if leaked:
        failures.append(f"processes leaked: {leaked}")
    if failures:
        pytest.fail("\n".join(failures))


#: The test's own "node" and "world" network namespaces (tests/network), for the network tests here.
topo = network_world.topo


@pytest.fixture
def net_agent(make_agent: MakeAgent, topo: Topology) -> MakeAgent:
    """``net_agent(**env)``: ``make_agent``'s agent, its sandboxes on the test's own network (``topo``)."""
    return functools.partial(network_agent, make_agent, topo)


@pytest.fixture
def own_agent(kube: LocalCluster, make_agent: MakeAgent, request: pytest.FixtureRequest) -> OwnAgent:
    """``make_agent``'s agent and the user of its own it requests as, so faults can single it out."""
    return own_user_agent(kube, make_agent, request)


@pytest.fixture
def qemu_settings(guest_image: Path) -> dict[str, str]:
    """An agent's settings for QEMU guests on this machine: TCG allowed (no KVM here), the guest
    image (``guest_image``, the fixture of tests/qemu, which the test's module takes over)."""
    return {
        "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "process,qemu",
        "VMSANDBOX_AGENT_GUEST_IMAGE_DIR": str(guest_image),
        "VMSANDBOX_AGENT_ALLOW_TCG": "true",
    }
