"""The image, run the way the chart runs it: operator and agent containers from ``podman run`` flags
derived from ``helm template`` output, against the local control plane, a sandbox to Succeeded
under QEMU (TCG) and its logs through the agent in the container.

The image is the one pushed to a loopback registry and pulled back by digest; the chart is
rendered with that reference, and the containers run exactly the image the manifests name.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.chart.helm import one
from tests.image.chart import render, run_values
from tests.image.pod import ContainerRun, PodIdentity, config_maps, container_run
from tests.image.podman import inspect, podman
from tests.leaks import processes_mentioning
from tests.node_agent.support import Cluster, Registry, free_port, pid_alive, wait_for
from vmsandbox.cli import main as cli
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.hypervisor.cgroups import VMCgroup

pytestmark = [pytest.mark.image, pytest.mark.kube, pytest.mark.vm]
#: The chart's default vmmCgroupParent.
SLICE = "vmsandbox.slice"


class Containers:
    """Containers this test started; all stopped and removed at the end, whatever happened."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []
        #: Mount namespaces the containers ran in, held open so that no other namespace can take
        #: their inode numbers: their VMs keep them (hostPID, cgroups of their own).
        self.mount_namespaces: dict[int, int] = {}

    def start(self, run: ContainerRun) -> None:
        self.names.append(run.name)
        podman(*run.command())
        self.note(run.name)

    def note(self, name: str) -> None:
        """Remember the container's current mount namespace (again after a restart)."""
        pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        with contextlib.suppress(OSError):
            fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
            self.mount_namespaces[os.fstat(fd).st_ino] = fd

    def outliving(self) -> list[int]:
        """VM processes started from the containers that still run (in a VM cgroup, in one of the
        containers' mount namespaces): a VM left behind runs on once its agent's container is gone."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    in_vm_cgroup = f":/{SLICE}/" in (entry / "cgroup").read_text()
                    if in_vm_cgroup and os.stat(entry / "ns" / "mnt").st_ino in self.mount_namespaces:
                        found.append(int(entry.name))
        return found

    def logs(self, name: str) -> str:
        proc = podman("logs", name, check=False)
        return (proc.stdout + proc.stderr)[-6000:]

    def running(self, name: str) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        return proc.stdout.strip() == "true"

    def stop_all(self) -> None:
        for name in reversed(self.names):
            podman("stop", "--time", "30", name, check=False, timeout=90)
            podman("rm", "--force", name, check=False)
        left = podman(
            "ps", "--all", "--filter", f"name={self.prefix}", "--format", "{{.Names}}"
        ).stdout.split()
        outliving = _kill_with_cgroups(self.outliving())
        for fd in self.mount_namespaces.values():
            os.close(fd)
        self.mount_namespaces.clear()
        assert left == [], f"containers left: {left}"
        assert outliving == [], f"processes outlived their containers: {outliving}"


@pytest.fixture
def containers() -> Iterator[Containers]:
    c = Containers(f"vmsb-{uuid.uuid4().hex[:6]}")
    try:
        yield c
    finally:
        c.stop_all()


def _kill_with_cgroups(pids: list[int]) -> list[str]:
    """SIGKILL these processes with every VM cgroup they are in; returns their command lines."""
    lines, cgroups = [], set()
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                path = line.split(":", 2)[2].lstrip("/")
                if path.startswith(f"{SLICE}/"):
                    cgroups.add(path)
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    for path in cgroups:
        with contextlib.suppress(OSError):
            VMCgroup(path).remove()
    return lines


def _namespace(kube: LocalCluster, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    resp = kube.http("POST", "/api/v1/namespaces", json=body)
    assert resp.status_code == 201, resp.text


def _chart_in(
    kube: LocalCluster, namespace: str, pushed_image: str, registry: Registry, tmp_path: Path
) -> tuple[Path, list[dict[str, Any]]]:
    """Renders the chart into a new ``namespace`` to run ``pushed_image`` (free ports, the test
    registry trusted); returns the node's host directory and the rendered objects."""
    _namespace(kube, namespace)
    host_dir = tmp_path / "node"
    ports = {"health": free_port(), "metrics": free_port(), "agent": free_port()}
    return host_dir, render(run_values(pushed_image, registry.host, host_dir, ports), tmp_path, namespace)


@dataclass(frozen=True)
class _Release:
    """The chart rendered into a namespace of its own to run the pushed image on one new node, with
    what its pods run from: the test registry, a scratch directory and the test's containers."""

    suffix: str
    namespace: str
    node: str
    host_dir: Path
    objects: list[dict[str, Any]]
    image_user: str
    registry: Registry
    workdir: Path
    containers: Containers

    def pod(self, kind: str, role: str) -> ContainerRun:
        """The ``podman run`` of the ``kind`` workload's pod (Deployment/DaemonSet), named for ``role``."""
        return container_run(
            one(self.objects, kind),
            identity=PodIdentity(
                name=f"{self.containers.prefix}-{role}", namespace=self.namespace, node=self.node
            ),
            workdir=self.workdir / f"{role}-pod",
            config_maps=config_maps(self.objects),
            image_user=self.image_user,
        )


@pytest.fixture
def release(
    kube: LocalCluster, pushed_image: str, image_registry: Registry, containers: Containers, tmp_path: Path
) -> _Release:
    """A fresh namespace with the chart rendered into it, and its Node labelled for the DaemonSet."""
    suffix = uuid.uuid4().hex[:6]
    namespace, node = f"vmsandbox-system-{suffix}", f"imgnode-{suffix}"
    host_dir, objects = _chart_in(kube, namespace, pushed_image, image_registry, tmp_path)
    image_user = str(inspect(pushed_image)["Config"].get("User") or "")
    labels = one(objects, "DaemonSet")["spec"]["template"]["spec"].get("nodeSelector") or {}
    node_body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}}
    resp = kube.http("POST", "/api/v1/nodes", json=node_body)
    assert resp.status_code == 201, resp.text
    return _Release(
        suffix, namespace, node, host_dir, objects, image_user, image_registry, tmp_path, containers
    )


@contextlib.contextmanager
def _logs_on_failure_then_cleanup(
    kube: LocalCluster, containers: Containers, namespace: str, node: str
) -> Iterator[None]:
    """Every container's log printed when the test fails; its Node and namespace deleted however
    it ends."""
    try:
        yield
    except BaseException:
        for n in containers.names:
            print(f"---- {n}\n{containers.logs(n)}")
        raise
    finally:
        kube.http("DELETE", f"/api/v1/nodes/{node}")
        kube.http("DELETE", f"/api/v1/namespaces/{namespace}")


def _probe(containers: Containers, run: ContainerRun, which: str) -> None:
    """Call the container's rendered httpGet probe, as kubelet would, until it answers 2xx."""
    probe = run.spec[which]["httpGet"]
    port = probe["port"] if isinstance(probe["port"], int) else run.ports[probe["port"]]
    url = f"http://127.0.0.1:{port}{probe['path']}"

    def ok() -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(url, timeout=5).status_code < 400
        assert containers.running(run.name), f"{run.name} exited:\n{containers.logs(run.name)}"
        return False

    wait_for(f"{run.name} {which} {url}", ok, timeout=120, interval=1)


def _with_kubeconfig(run: ContainerRun, kubeconfig: Path, variable: str, directory: Path) -> None:
    """The one thing a cluster gives a pod that this emulation cannot: its service account.

    Readable by the pod's user, as kubelet makes the projected token.
    """
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "kubeconfig"
    copy.write_bytes(kubeconfig.read_bytes())
    copy.chmod(0o644)
    run.flags += ["--volume", f"{copy}:/var/run/vmsandbox-test/kubeconfig:ro"]
    run.flags += ["--env", f"{variable}=/var/run/vmsandbox-test/kubeconfig"]


@pytest.mark.timeout(900)
def test_chart_workloads_run_from_the_image_and_a_sandbox_succeeds_under_qemu(
    kube: LocalCluster, pushed_image: str, release: _Release, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace, node, host_dir = release.namespace, release.node, release.host_dir
    assert release.image_user.split(":")[0] == "65532"  # the image's own default is the operator's user

    with kube.api_client() as api_client:
        cluster = Cluster(api_client=api_client, namespace=namespace)
        op = release.pod("Deployment", "operator")
        ag = release.pod("DaemonSet", "agent")
        # What ran is what the manifests say: the pulled-back image, by digest.
        assert op.image == ag.image == pushed_image
        assert op.user is not None and op.user.split(":")[0] == "65532" and op.read_only_root
        assert "--privileged" in ag.flags and ag.read_only_root
        _with_kubeconfig(op, kube.kubeconfig_path, "KUBECONFIG", release.workdir / "operator-sa")
        _with_kubeconfig(ag, kube.kubeconfig_path, "VMSANDBOX_AGENT_KUBECONFIG", release.workdir / "agent-sa")

        release.containers.start(ag)
        release.containers.start(op)
        with _logs_on_failure_then_cleanup(kube, release.containers, namespace, node):
            _probe(release.containers, ag, "readinessProbe")
            _probe(release.containers, op, "livenessProbe")
            _probe(release.containers, ag, "livenessProbe")
            _operator_is_non_root_and_read_only(op)
            name, cid = _run_sandbox(kube, cluster, release.registry, release.workdir, capsys, node)
            wait_for("the agent to tear the VM down", lambda: not VMCgroup(f"{SLICE}/{cid}").exists(), 60)
            assert cluster.get(name) is None
    release.containers.stop_all()
    # The agent shares the node's PID namespace (hostPID): its VMs are found by their state paths.
    assert processes_mentioning(str(host_dir)) == [], "processes outlived the agent container"


def _qemu_in(cid: str) -> list[str]:
    """Command lines of the QEMU processes in the VM cgroup of container ``cid``: the agent shares
    the node's PID namespace, and its state paths are the same in every agent container."""
    found = []
    for pid in VMCgroup(f"{SLICE}/{cid}").pids():
        with contextlib.suppress(OSError):
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return [c for c in found if "qemu-system" in c]


def _operator_is_non_root_and_read_only(op: ContainerRun) -> None:
    proc = podman("exec", op.name, "sh", "-c", "id -u; touch /probe-write 2>&1 || echo read-only")
    lines = proc.stdout.split()
    assert lines[0] == "65532", proc.stdout
    assert "read-only" in proc.stdout, proc.stdout


def _run_sandbox(
    kube: LocalCluster,
    cluster: Cluster,
    registry: Registry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    node: str,
) -> tuple[str, str]:
    name = f"img-{uuid.uuid4().hex[:6]}"
    manifest = registry.manifest(
        tmp_path / "sandbox.json",
        name,
        ["sh", "-c", "echo hello from the image"],
        hypervisor="qemu",
        resources={"vcpus": 1, "memoryMiB": 256},
    )
    cfg = ["--kubeconfig", str(kube.kubeconfig_path)]
    started = time.monotonic()
    assert cli([*cfg, "apply", "-f", str(manifest), "-n", cluster.namespace]) == 0
    status = cluster.wait_phase(name, "Succeeded", "Failed", timeout=420)
    assert status["phase"] == "Succeeded", status
    assert status["nodeName"] == node and status["hypervisor"] == "qemu"
    assert status["container"]["exitCode"] == 0
    with capsys.disabled():
        print(f"\nsandbox Succeeded after {time.monotonic() - started:.1f}s: {status.get('bootTimings')}")
    capsys.readouterr()
    assert cli([*cfg, "logs", name, "-n", cluster.namespace]) == 0
    assert capsys.readouterr().out == "hello from the image\n"
    assert cli([*cfg, "delete", name, "-n", cluster.namespace, "--wait", "--timeout", "60"]) == 0
    return name, status["container"]["id"]


@pytest.mark.timeout(900)
def test_a_sandbox_survives_podman_restart_of_the_agent(kube: LocalCluster, release: _Release) -> None:
    """``podman restart`` kills every process of the agent's container (its cgroup), as a container
    runtime restarting the pod does: the VM, in a cgroup of its own, runs on and is adopted."""
    namespace, node, host_dir, suffix = release.namespace, release.node, release.host_dir, release.suffix
    with kube.api_client() as api_client:
        cluster = Cluster(api_client=api_client, namespace=namespace)
        ag = release.pod("DaemonSet", "agent")
        assert "--privileged" in ag.flags and ag.flags[ag.flags.index("--pid") + 1] == "host"
        _with_kubeconfig(ag, kube.kubeconfig_path, "VMSANDBOX_AGENT_KUBECONFIG", release.workdir / "agent-sa")
        release.containers.start(ag)
        with _logs_on_failure_then_cleanup(kube, release.containers, namespace, node):
            _probe(release.containers, ag, "readinessProbe")
            name = f"rs-{suffix}"
            spec = {
                "image": f"{release.registry.host}/test/busybox:latest",
                "command": ["sh", "-c", "while true; do echo tick; sleep 1; done"],
                "hypervisor": "qemu",
                "resources": {"vcpus": 1, "memoryMiB": 256},
            }
            cluster.create_sandbox(name, spec, node=node)
            running = cluster.wait_phase(name, "Running", timeout=420)
            vmm, cid = running["vm"]["vmmPID"], running["container"]["id"]
            assert vmm in VMCgroup(f"{SLICE}/{cid}").pids(), "QEMU runs in the VM's own cgroup"
            before = cluster.get(name) or {}

            podman("restart", "--time", "5", ag.name, timeout=180)
            release.containers.note(ag.name)
            assert pid_alive(vmm), "the VM died with the agent's container"
            _probe(release.containers, ag, "readinessProbe")
            wait_for(
                "the adoption", lambda: "adopted running VM" in release.containers.logs(ag.name), timeout=90
            )
            after = cluster.get(name) or {}
            assert after["status"] == before["status"], "status changed on adoption"
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
            assert pid_alive(vmm) and _qemu_in(cid)

            cluster.delete(name)
            cluster.wait_gone(name, timeout=120)
            wait_for("the VM to stop", lambda: not pid_alive(vmm), timeout=30)
            assert not VMCgroup(f"{SLICE}/{cid}").exists(), "the VM's cgroup outlived it"
    release.containers.stop_all()
    assert processes_mentioning(str(host_dir)) == [], "processes outlived the agent container"
