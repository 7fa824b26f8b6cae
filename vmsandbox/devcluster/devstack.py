"""The processes ``vmsandbox dev`` runs beside its local control plane: the operator and one node
agent, as subprocesses (``python -m vmsandbox.operator``, ``python -m vmsandbox.node_agent``)
configured through their ``VMSANDBOX_*`` variables, restarted with back-off when they exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import requests

from vmsandbox.api.constants import (
    AGENT_READY_LABEL,
    PROCESS_BACKEND_ALLOWED,
    PROCESS_BACKEND_LABEL,
    SUBRESOURCE_GROUP,
)
from vmsandbox.devcluster.apiservice import Answer, operator_settings, register, serving_certificate
from vmsandbox.devcluster.backend import Backend, default_guest_image_dir
from vmsandbox.devcluster.errors import DevClusterError
from vmsandbox.devcluster.processes import free_ports, python_env
from vmsandbox.devcluster.sample_image import SAMPLES_DIR
from vmsandbox.devcluster.vmmuser import dev_vmm_user
from vmsandbox.kube.paths import subresource_group_path

#: Where the operator keeps its Leases and the agent its own, as the chart's namespace.
AGENT_NAMESPACE = "vmsandbox-system"


class Client(Protocol):
    """An admin client of the local control plane (the CLI's), sending one request."""

    def request(self, method: str, path: str, **kw: Any) -> Answer: ...


def _free_port() -> int:
    return free_ports(1)[0]


@dataclass
class Component:
    """One supervised process of ``vmsandbox dev``, restarted with back-off as a controller would."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None

    #: Back-off doubles from the first to the cap; a run longer than ``STABLE`` resets it.
    FIRST_BACKOFF = 1.0
    MAX_BACKOFF = 30.0
    STABLE = 60.0

    def backoff(self, ran_for: float) -> float:
        if ran_for >= self.STABLE:
            self.restarts = 0
        return min(self.FIRST_BACKOFF * 2**self.restarts, self.MAX_BACKOFF)


class DevStack:
    """The processes ``vmsandbox dev`` starts and supervises, stopped in reverse order whatever happens.

    Like a Deployment (the operator) and a DaemonSet (the agent), a component that exits is
    started again with the same configuration after a doubling back-off; only ``stop`` ends them.
    The agent stays this process's direct child, so its VMs are adopted by the restarted agent.
    """

    def __init__(self, workdir: Path, kubeconfig: Path, backend: Backend, node_name: str) -> None:
        self.workdir = workdir
        self.kubeconfig = kubeconfig
        self.backend = backend
        self.node_name = node_name
        self.components: list[Component] = []
        self.agent_port = _free_port()
        self.subresources_port = _free_port()
        self._serving_files: tuple[Path, Path, Path] | None = None

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        component = Component(name, argv, env)
        self.components.append(component)
        self._launch(component)

    def _launch(self, component: Component) -> None:
        with (self.workdir / f"{component.name}.log").open("ab") as log:
            component.proc = subprocess.Popen(
                component.argv,
                env=component.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        component.started_at = time.monotonic()
        component.restart_at = None

    def pid(self, name: str) -> int | None:
        """The running pid of component ``name``, if it runs."""
        for component in self.components:
            if component.name == name and component.proc and component.proc.poll() is None:
                return component.proc.pid
        return None

    def _serving(self) -> tuple[Path, Path, Path]:
        """(CA, certificate, key) of the operator's aggregated server, made on first use."""
        if self._serving_files is None:
            self._serving_files = serving_certificate(self.workdir / "subresources", AGENT_NAMESPACE)
        return self._serving_files

    def register_api(self, api: Client) -> None:
        """The APIService for subresources.vmsandbox.io, served by the operator (the API path)."""
        register(api.request, AGENT_NAMESPACE, self.subresources_port, self._serving()[0])

    def register_node(self, api: Client) -> None:
        """Create this machine's Node, as the kubelet would on a real cluster; the agent annotates it."""
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name}},
        }
        resp = api.request("POST", "/api/v1/nodes", json=body)
        if resp.status_code not in (201, 409):
            raise DevClusterError(
                f"creating node {self.node_name}: {resp.status_code} {resp.text}", step="dev"
            )
        if self.backend.name == "process":
            # The process backend is allowed per namespace, by an admin: here, `default` only.
            patch = {"metadata": {"labels": {PROCESS_BACKEND_LABEL: PROCESS_BACKEND_ALLOWED}}}
            headers = {"Content-Type": "application/merge-patch+json"}
            resp = api.request("PATCH", "/api/v1/namespaces/default", json=patch, headers=headers)
            if resp.status_code != 200:
                raise DevClusterError(
                    f"labelling namespace default: {resp.status_code} {resp.text}", step="dev"
                )

    def start(self) -> None:
        allowed = ",".join(sorted({"cloud-hypervisor", "qemu", self.backend.name}))
        env = python_env()
        op_env = {
            **env,
            "VMSANDBOX_OPERATOR_NAMESPACE": AGENT_NAMESPACE,
            "VMSANDBOX_OPERATOR_ALLOWED_HYPERVISORS": allowed,
            "VMSANDBOX_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{_free_port()}/healthz",
            "VMSANDBOX_OPERATOR_METRICS_HOST": "127.0.0.1",
            "VMSANDBOX_OPERATOR_METRICS_PORT": str(_free_port()),
            **operator_settings(self.subresources_port, *self._serving()[1:]),
        }
        self._spawn(
            "operator",
            [sys.executable, "-m", "vmsandbox.operator", "--kubeconfig", str(self.kubeconfig)],
            op_env,
        )
        agent_dir = self.workdir / "agent"
        agent_env = {
            **env,
            "NODE_NAME": self.node_name,
            "POD_NAMESPACE": AGENT_NAMESPACE,
            "VMSANDBOX_AGENT_KUBECONFIG": str(self.kubeconfig),
            "VMSANDBOX_AGENT_STATE_DIR": str(agent_dir / "state"),
            "VMSANDBOX_AGENT_RUNTIME_ROOT": str(agent_dir / "run"),
            "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": self.backend.name,
            "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": self.backend.name,
            "VMSANDBOX_AGENT_LISTEN_ADDRESS": "127.0.0.1",
            "VMSANDBOX_AGENT_ADVERTISE_ADDRESS": "127.0.0.1",
            "VMSANDBOX_AGENT_PORT": str(self.agent_port),
            "VMSANDBOX_AGENT_RESERVE_VCPUS": "0",
            "VMSANDBOX_AGENT_RESERVE_MEMORY_MIB": "256",
            "VMSANDBOX_AGENT_ALLOWED_LAYOUT_DIRS": str(SAMPLES_DIR),
            # The backend was chosen for this machine, and here QEMU runs under TCG: say so.
            "VMSANDBOX_AGENT_ALLOW_TCG": "true" if self.backend.name == "qemu" else "false",
        }
        if self.backend.name != "process":
            agent_env["VMSANDBOX_AGENT_GUEST_IMAGE_DIR"] = str(default_guest_image_dir())
            user, why = dev_vmm_user([default_guest_image_dir() / "vmlinuz", agent_dir / "run"])
            agent_env["VMSANDBOX_AGENT_VMM_USER"] = user
            if why:
                print(why, file=sys.stderr)
        self._spawn("agent", [sys.executable, "-m", "vmsandbox.node_agent"], agent_env)

    def dead(self) -> list[str]:
        return [
            f"{c.name} (exit {c.proc.returncode})"
            for c in self.components
            if c.proc is not None and c.proc.poll() is not None
        ]

    def wait_ready(self, api: Client, stop: threading.Event, timeout: float = 120.0) -> str | None:
        """None once both ways in work, the agent's node and the operator's API path; else why not."""
        deadline = time.monotonic() + timeout
        while not (node_ready(api, self.node_name) and api_path_ready(api)):
            if self.dead() or stop.is_set() or time.monotonic() > deadline:
                return ", ".join(self.dead()) or (
                    f"{SUBRESOURCE_GROUP} is not served yet"
                    if node_ready(api, self.node_name)
                    else "the agent did not publish its node in time"
                )
            time.sleep(0.5)
        return None

    def supervise(self, now: float | None = None) -> list[str]:
        """Restart what exited once its back-off has passed; returns the lines to print."""
        now = time.monotonic() if now is None else now
        said = []
        for c in self.components:
            if c.proc is None or c.proc.poll() is None:
                continue
            if c.restart_at is None:
                delay = c.backoff(now - c.started_at)
                c.restart_at = now + delay
                said.append(
                    f"vmsandbox dev: {c.name} exited with status {c.proc.returncode}; "
                    f"starting it again in {delay:g}s (restart {c.restarts + 1}); "
                    f"log: {self.workdir / (c.name + '.log')}"
                )
            elif now >= c.restart_at:
                c.restarts += 1
                self._launch(c)
                said.append(f"vmsandbox dev: {c.name} started again (pid {c.proc.pid})")
        return said

    def stop(self) -> None:
        for c in reversed(self.components):  # the agent first: it tears its VMs down
            proc = c.proc
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30 if c.name == "agent" else 15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.components = []


def log_tails(workdir: Path, names: Iterable[str], lines: int = 15) -> str:
    """The last ``lines`` of each named component's log in ``workdir`` (where dev writes them)."""
    out = []
    for name in names:
        path = workdir / f"{name}.log"
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(out)


def api_path_ready(api: Client) -> bool:
    """Whether the API server answers for the operator's subresources.vmsandbox.io."""
    try:
        return api.request("GET", subresource_group_path()).status_code == 200
    except requests.RequestException:
        return False


def node_ready(api: Client, node: str) -> bool:
    resp = api.request("GET", f"/api/v1/nodes/{quote(node)}")
    if resp.status_code != 200:
        return False
    return (resp.json()["metadata"].get("labels") or {}).get(AGENT_READY_LABEL) == "ready"
