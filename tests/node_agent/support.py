"""Helpers for the node agent tests: a test-built busybox image, a loopback registry, the agent as
a real subprocess, and the operator's half of the contract (scheduling) played by the test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cloud_hypervisor.standin.kernel_image import fake_bzimage
from tests.polling import wait_for as wait_for
from vmsandbox.api.constants import (
    AGENT_ENDPOINT_ANNOTATION,
    AGENT_FINALIZER,
    AGENT_READY_LABEL,
    API_VERSION,
    GROUP,
    KIND,
    NODE_LABEL,
    PLURAL,
    VERSION,
)
from vmsandbox.devcluster.cluster import ADMIN_USER
from vmsandbox.devcluster.sample_image import fill_busybox_rootfs
from vmsandbox.hypervisor.procs import running

if TYPE_CHECKING:
    from tests.network.conftest import Topology

REPO = Path(__file__).resolve().parents[2]
STANDIN_DIR = REPO / "tests" / "cloud_hypervisor" / "standin"
APPLETS = ("sh", "true", "false", "echo", "sleep", "cat", "env", "ls", "id", "pwd")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory directly under /tmp, removed with all it holds afterwards. Short on
    purpose: VM and agent sockets live below it, and AF_UNIX paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: Running (not a zombie): the one check the code under test uses too.
pid_alive = running


# ---- the image ---------------------------------------------------------------------------


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def build_busybox_layout(layout: Path) -> Path:
    """An OCI layout with ``busybox:latest`` (Cmd ["sh"]) and ``busybox:nocmd`` (nothing to run)."""
    work = layout.parent / "bb-build"
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:base"])
    run(["umoci", "unpack", "--image", f"{layout}:base", str(work)])
    fill_busybox_rootfs(work / "rootfs", APPLETS)
    run(["umoci", "repack", "--image", f"{layout}:nocmd", str(work)])
    run(
        [
            "umoci",
            "config",
            "--image",
            f"{layout}:nocmd",
            "--config.env",
            "PATH=/bin",
            "--config.workingdir",
            "/",
        ]
    )
    run(["umoci", "config", "--image", f"{layout}:nocmd", "--tag", "latest", "--config.cmd", "sh"])
    shutil.rmtree(work)
    return layout


@dataclass
class Registry:
    """Debian's ``docker-registry`` on a loopback port (plain HTTP)."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def busybox(self) -> str:
        """The test image every sandbox test runs."""
        return f"{self.host}/test/busybox:latest"

    def sandbox(self, command: list[str], **spec: Any) -> dict[str, Any]:
        """A sandbox spec running ``command`` in the test image, with ``spec``'s other fields."""
        return {"image": self.busybox, "command": command, **spec}

    def manifest(self, path: Path, name: str, command: list[str], **spec: Any) -> Path:
        """``path`` written as the manifest of sandbox ``name`` (for ``vmsandbox apply -f``),
        with :meth:`sandbox`'s spec."""
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}}
        path.write_text(json.dumps({**body, "spec": self.sandbox(command, **spec)}))
        return path

    def start(self) -> None:
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        log = (self.root / "registry.log").open("ab")
        self.proc = subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        wait_for("the registry to answer", self._answers, timeout=20)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"registry exited: {(self.root / 'registry.log').read_text()[-2000:]}")
        try:
            return requests.get(f"http://{self.host}/v2/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def push(self, layout: Path, tag: str, repo_tag: str) -> str:
        run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{layout}:{tag}",
                f"docker://{self.host}/{repo_tag}",
            ]
        )
        return f"{self.host}/{repo_tag}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def fake_guest_image(directory: Path) -> Path:
    """What the Cloud Hypervisor stand-in checks: a bzImage-headed kernel, an initramfs, a root disk."""
    directory.mkdir(parents=True, exist_ok=True)
    fake_bzimage(directory / "vmlinuz")
    (directory / "initramfs.img").write_bytes(b"\0" * 1024)
    (directory / "rootfs.img").write_bytes(b"\0" * 65536)
    return directory


# ---- the cluster side --------------------------------------------------------------------


@dataclass
class Cluster:
    """The test's hands on the API server: nodes, sandboxes, and the operator's scheduling step."""

    api_client: client.ApiClient
    namespace: str
    custom: client.CustomObjectsApi = field(init=False)
    core: client.CoreV1Api = field(init=False)

    def __post_init__(self) -> None:
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    def create_node(self, name: str) -> None:
        body = client.V1Node.from_dict({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        assert body is not None
        self.core.create_node(body)

    def node(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(self.core.read_node(name))
        return result

    def lease(self, name: str) -> dict[str, Any] | None:
        try:
            lease = client.CoordinationV1Api(self.api_client).read_namespaced_lease(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(lease)
        return result

    def create_sandbox(self, name: str, spec: dict[str, Any], *, node: str | None = None) -> dict[str, Any]:
        """Create, and when ``node`` is given schedule it there as the operator would."""
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}
        obj: Any = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        if node is not None:
            obj = self.schedule(name, node)
        return dict(obj)

    def schedule(self, name: str, node: str, schedule_ms: float = 1.5) -> dict[str, Any]:
        """The operator's step: label first, then nodeName, phase Scheduled and the condition via /status."""
        self.merge_patch(name, {"metadata": {"labels": {NODE_LABEL: node}}})
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "phase": "Scheduled",
            "nodeName": node,
            "conditions": [
                {"type": "Scheduled", "status": "True", "reason": "Scheduled", "lastTransitionTime": now}
            ],
            "bootTimings": {"schedule": schedule_ms},
        }
        obj: Any = self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )
        return dict(obj)

    def merge_patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the sandbox ``name`` itself (not /status), as another client sends it."""
        obj: Any = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, patch, _content_type="application/merge-patch+json"
        )
        return dict(obj)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(obj)

    def status(self, name: str) -> dict[str, Any]:
        obj = self.get(name)
        assert obj is not None, f"sandbox {name} does not exist"
        return dict(obj.get("status") or {})

    def wait_phase(self, name: str, *phases: str, timeout: float = 60.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in phases else None

        try:
            return wait_for(f"{name} to reach {'/'.join(phases)}", check, timeout=timeout)
        except AssertionError as exc:
            status = self.status(name)
            seen = (
                f"; agents as the API holds them: {self.agents_seen()}" if not status.get("nodeName") else ""
            )
            raise AssertionError(f"{exc}; status now {json.dumps(status)}{seen}") from None

    def agents_seen(self) -> str:
        """Each node's agent label and the last renewal of the agent Leases in this namespace, with
        the time now: what an operator that calls the agents not ready had to go on."""
        nodes = {
            n.metadata.name: (n.metadata.labels or {}).get(AGENT_READY_LABEL)
            for n in self.core.list_node().items
        }
        leases = client.CoordinationV1Api(self.api_client).list_namespaced_lease(self.namespace).items
        renewed = {lease.metadata.name: str(lease.spec.renew_time) for lease in leases}
        return f"now {time.strftime('%H:%M:%S', time.gmtime())} UTC, nodes {nodes}, leases {renewed}"

    def delete(self, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def wait_gone(self, name: str, timeout: float = 30.0) -> None:
        wait_for(f"{name} to be deleted", lambda: self.get(name) is None, timeout=timeout)

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.namespace).items
        found = [self.api_client.sanitize_for_serialization(e) for e in items]
        return [e for e in found if e.get("involvedObject", {}).get("name") == name]

    def remove_agent_finalizer(self, name: str) -> None:
        obj = self.get(name)
        assert obj is not None
        finalizers = [f for f in obj["metadata"].get("finalizers") or [] if f != AGENT_FINALIZER]
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": obj["metadata"]["resourceVersion"],
                },
                {"op": "replace", "path": "/metadata/finalizers", "value": finalizers},
            ],
            _content_type="application/json-patch+json",
        )


# ---- the agent as a process --------------------------------------------------------------


def network_agent(make_agent: MakeAgent, topo: Topology, **env: str) -> AgentProcess:
    """An agent whose sandboxes get ``topo``'s network; the node namespace's plumbing state is
    started from scratch first (the agent redoes it)."""
    topo.net("reconcile")
    return make_agent(**topo.agent_env(), **env)


def agent_command() -> list[str]:
    installed = shutil.which("vmsandbox-agent")
    return [installed] if installed else [sys.executable, "-m", "vmsandbox.node_agent"]


#: The agent's setting of the parent of its VMs' cgroups.
VMM_CGROUP_PARENT_ENV = "VMSANDBOX_AGENT_VMM_CGROUP_PARENT"


def process_agent_env(
    node: str, namespace: str, kubeconfig: Path, workdir: Path, **settings: str
) -> dict[str, str]:
    """An agent that runs only the process backend and can pull nothing (its registry a closed
    port), for tests of what it asks of the API; ``settings``: more VMSANDBOX_AGENT_* values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMSANDBOX_AGENT_")}
    env.update(
        {
            "NODE_NAME": node,
            "POD_NAMESPACE": namespace,
            "PYTHONPATH": str(REPO),
            "VMSANDBOX_AGENT_KUBECONFIG": str(kubeconfig),
            "VMSANDBOX_AGENT_STATE_DIR": str(workdir / "state"),
            "VMSANDBOX_AGENT_RUNTIME_ROOT": str(workdir / "run"),
            "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "process",
            "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "process",
            "VMSANDBOX_AGENT_GUEST_IMAGE_DIR": str(fake_guest_image(workdir / "guest")),
            "VMSANDBOX_AGENT_INSECURE_REGISTRIES": "127.0.0.1:9",
            "VMSANDBOX_AGENT_LISTEN_ADDRESS": "127.0.0.1",
            "VMSANDBOX_AGENT_PORT": "0",
            "VMSANDBOX_AGENT_LEASE_RENEW_SECONDS": "1",
            **{f"VMSANDBOX_AGENT_{k.upper()}": v for k, v in settings.items()},
        }
    )
    return env


@dataclass
class AgentProcess:
    """``vmsandbox-agent`` run as a subprocess with ``NODE_NAME`` and options from the environment."""

    node: str
    workdir: Path
    env: dict[str, str]
    cluster: Cluster
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: ``cgroup.procs`` files the agent joins before it runs (as a container's main process would).
    cgroup_procs: list[Path] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        """Where its settings (``agent_env``, ``process_agent_env``) put the agent's state."""
        return Path(self.env["VMSANDBOX_AGENT_STATE_DIR"])

    @property
    def runtime_root(self) -> Path:
        """Where its settings put the runtime's root, which holds the containers it runs."""
        return Path(self.env["VMSANDBOX_AGENT_RUNTIME_ROOT"])

    @property
    def log_path(self) -> Path:
        return self.workdir / f"agent-{self.starts}.log"

    def start(self, wait_ready: bool = True) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*in_cgroup(self.cgroup_procs), *agent_command()],
            env=self.env,
            stdout=log,
            stderr=log,
            cwd=self.workdir,
            start_new_session=False,
        )
        if wait_ready:
            try:
                wait_for(f"agent on {self.node} to be ready", self._ready, timeout=90)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nagent log:\n{self.logs()[-3000:]}") from None

    def endpoint(self) -> str | None:
        annotations = self.cluster.node(self.node)["metadata"].get("annotations") or {}
        return annotations.get(AGENT_ENDPOINT_ANNOTATION)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}: {self.logs()[-3000:]}")
        endpoint = self.endpoint()
        if not endpoint:
            return False
        try:
            return requests.get(endpoint + "/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def get(self, path: str, token: str | None = ADMIN_USER, **kwargs: Any) -> requests.Response:
        """A request to the agent's HTTP port, as ``token``'s user (the local control plane's
        tokens are user names), or without credentials when ``token`` is None."""
        endpoint = self.endpoint()
        assert endpoint
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(endpoint + path, headers=headers, timeout=kwargs.pop("timeout", 5), **kwargs)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("agent-*.log")))

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def wait_logged(self, what: str, text: str, count: int, timeout: float = 30) -> None:
        """Until ``count`` lines of the agent's log mention ``text`` (what a restarted agent
        adopted, say); fails naming ``what``."""

        def mentions() -> bool:
            return sum(text in line.get("msg", "") for line in self.log_lines()) >= count

        wait_for(what, mentions, timeout)

    def kill(self) -> None:
        """SIGKILL, like an OOM kill or a node hiccup: nothing gets to clean up."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def release_cgroups(self) -> list[str]:
        """Remove the node's own parent of VM cgroups (what is under it killed first); the names
        of the VM cgroups that were left there. Nothing for a parent the node does not own."""
        from tests.leaks import cgroups_left

        parent = self.env.get(VMM_CGROUP_PARENT_ENV, "")
        return cgroups_left(parent) if parent.endswith(f"/{self.node}") else []


#: The ``make_agent`` fixture: ``make_agent(start=True, node=None, **env)`` -> a running agent.
MakeAgent = Callable[..., AgentProcess]


def in_cgroup(procs: list[Path]) -> list[str]:
    """A command prefix that joins the cgroups whose ``cgroup.procs`` files are given, then execs."""
    if not procs:
        return []
    script = (
        'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@"'
    )
    return ["/bin/sh", "-c", script, "sh", str(len(procs)), *map(str, procs)]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def containers_left(runtime_root: Path) -> list[str]:
    if not runtime_root.is_dir():
        return []
    return sorted(p.name for p in runtime_root.iterdir() if not p.name.startswith("."))


def force_cleanup(runtime_root: Path) -> None:
    """Last resort after a failed test: delete whatever the runtime still holds."""
    from vmsandbox.runtime import Runtime

    runtime = Runtime(runtime_root)
    for cid in containers_left(runtime_root):
        with contextlib.suppress(Exception):
            runtime.delete(cid, force=True)


def iter_vmm_pids(statuses: Iterator[dict[str, Any]]) -> list[int]:
    return [int(s["vm"]["vmmPID"]) for s in statuses if s.get("vm", {}).get("vmmPID")]
