"""Port-forwarding through the node agent into a sandbox on the process backend.

A real API server decides who may (TokenReview + SubjectAccessReview on
``vmsandboxes/portforward``), a real agent connects from the test-made "node" namespace to the
sandbox's address on the bridge, and the clients are the Kubernetes Python client's own
``portforward`` helper and ``vmsandbox port-forward``. Servers in the sandbox: busybox httpd on
8080 and an echo server (``nc -ll -e cat``) on 9000.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.stream.ws_client import portforward_call

from tests.network.conftest import DNS, Topology, sh
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, unique, wait_for
from tests.qemu.conftest import guest_image, qemu_binary, vmm_user
from tests.security.support import grant
from vmsandbox.devcluster.cluster import ADMIN_USER, LocalCluster

pytestmark = pytest.mark.kube
__all__ = ["guest_image", "qemu_binary", "vmm_user"]  # fixtures, used by name

PAGE = "hello-from-the-sandbox"
SERVERS = (
    f"mkdir -p /www && echo {PAGE} > /www/index.html && busybox httpd -p 8080 -h /www"
    " && exec busybox nc -ll -p 9000 -e cat"
)


def _sandbox(cluster: Cluster, registry: Registry, agent: AgentProcess, command: str, **extra: Any) -> str:
    name = unique("pf")
    spec = {
        "image": registry.busybox,
        "command": ["sh", "-c", command],
        "hypervisor": "process",
        **extra,
    }
    cluster.create_sandbox(name, spec, node=agent.node)
    cluster.wait_phase(name, "Running", timeout=90)
    return name


def _python_client_forward(agent: AgentProcess, namespace: str, name: str, port: int, token: str) -> Any:
    endpoint = agent.endpoint()
    assert endpoint
    config = client.Configuration()
    config.host = endpoint
    return portforward_call(
        config,
        "GET",
        f"{endpoint}/portforward/{namespace}/{name}",
        query_params=[("ports", str(port))],
        headers={"authorization": f"Bearer {token}"},
    )


def _recv_exactly(sock: Any, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _agent_usage(pid: int) -> tuple[int, int]:
    """(threads, sockets) of the agent process."""
    threads = len(os.listdir(f"/proc/{pid}/task"))
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return threads, sockets


def _established_to(topo: Topology, ip: str) -> list[str]:
    out = sh("ip", "netns", "exec", topo.node, "ss", "-Htn", "state", "established", "dst", ip)
    return [line for line in out.splitlines() if line.strip()]


class CLI:
    """``vmsandbox port-forward`` running in the background; stopped with Ctrl-C."""

    def __init__(self, kube: LocalCluster, *args: str) -> None:
        entry = Path(sys.executable).parent / "vmsandbox"
        self.proc = subprocess.Popen(
            [str(entry), "--kubeconfig", str(kube.kubeconfig_path), "port-forward", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def local_port(self) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> \d+", line)
        assert found, f"{line!r} {self.proc.stderr.read() if self.proc.poll() is not None else ''}"  # type: ignore[union-attr]
        return int(found.group(1))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
        _, err = self.proc.communicate(timeout=20)
        return err


@pytest.fixture
def cli_runs() -> Iterator[list[CLI]]:
    runs: list[CLI] = []
    yield runs
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def test_port_forward_relays_both_ways_and_leaves_nothing(
    net_agent: MakeAgent,
    cluster: Cluster,
    registry: Registry,
    topo: Topology,
    kube: LocalCluster,
    cli_runs: list[CLI],
) -> None:
    agent = net_agent()
    name = _sandbox(cluster, registry, agent, SERVERS)
    ns = cluster.namespace
    ip = cluster.status(name)["network"]["ip"]
    wait_for(
        "the sandbox's servers",
        lambda: "9000" in sh("ip", "netns", "exec", topo.sandbox_netns()[0], "ss", "-Htln"),
    )
    assert agent.proc is not None
    baseline = _agent_usage(agent.proc.pid)

    # The Kubernetes Python client's own helper: an HTTP GET, then 1 MiB echoed back.
    pf = _python_client_forward(agent, ns, name, 8080, ADMIN_USER)
    sock = pf.socket(8080)
    sock.sendall(b"GET /index.html HTTP/1.0\r\nHost: sandbox\r\n\r\n")
    answer = _recv_all(sock)  # type: ignore[arg-type]
    assert answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n")[0], answer[:200]
    assert PAGE.encode() in answer
    assert pf.error(8080) is None
    sock.close()

    pf = _python_client_forward(agent, ns, name, 9000, ADMIN_USER)
    sock = pf.socket(9000)
    data = os.urandom(1024 * 1024)
    threading.Thread(target=sock.sendall, args=(data,), daemon=True).start()
    assert _recv_exactly(sock, len(data)) == data
    sock.close()

    # The CLI: two connections at once, each ending its sending side first (half-close).
    cli = CLI(kube, "-n", ns, name, ":9000")
    cli_runs.append(cli)
    local = cli.local_port()
    conns = [socket.create_connection(("127.0.0.1", local), timeout=30) for _ in range(2)]
    payloads = [os.urandom(300_000), os.urandom(200_000)]
    for conn, payload in zip(conns, payloads, strict=True):
        conn.sendall(payload[:1000])  # each opens its own connection into the sandbox...
    wait_for("two connections open at once", lambda: len(_established_to(topo, ip)) >= 2 or None, timeout=30)
    results: list[bytes] = [b"", b""]

    def exchange(i: int) -> None:
        def send_rest() -> None:
            conns[i].sendall(payloads[i][1000:])
            conns[i].shutdown(socket.SHUT_WR)

        threading.Thread(target=send_rest, daemon=True).start()
        results[i] = _recv_all(conns[i])

    workers = [threading.Thread(target=exchange, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert results == payloads  # ...and both carry their bytes both ways, side by side
    for c in conns:
        c.close()

    # Nothing stays behind once the clients are gone: no connection into the sandbox, and the
    # agent's threads and sockets back to where they were.
    assert cli.stop() == ""
    wait_for("no connection into the sandbox", lambda: _established_to(topo, ip) == [] or None, timeout=30)
    wait_for(
        f"the agent's threads and sockets back to {baseline}",
        lambda: all(a <= b for a, b in zip(_agent_usage(agent.proc.pid), baseline, strict=True)) or None,  # type: ignore[union-attr]
        timeout=30,
    )


def test_port_forward_refusals(
    net_agent: MakeAgent, cluster: Cluster, registry: Registry, kube: LocalCluster
) -> None:
    agent = net_agent()
    ns = cluster.namespace
    name = _sandbox(cluster, registry, agent, SERVERS)
    offline = _sandbox(cluster, registry, agent, "sleep 600", network={"mode": "none"})
    path = f"/portforward/{ns}/{name}?ports=8080"

    # Who may: create on vmsandboxes/portforward, nothing less.
    assert agent.get(path, token=None).status_code == 401
    execer = unique("execer")
    grant(kube, ns, execer, [("vmsandbox.io", "vmsandboxes/exec", ["create"])])
    denied = agent.get(path, token=execer)
    assert denied.status_code == 403
    assert f'user "{execer}" cannot create resource "vmsandboxes/portforward"' in denied.text
    forwarder = unique("forwarder")
    grant(kube, ns, forwarder, [("vmsandbox.io", "vmsandboxes/portforward", ["create"])])
    pf = _python_client_forward(agent, ns, name, 8080, forwarder)
    sock = pf.socket(8080)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert PAGE.encode() in _recv_all(sock)  # type: ignore[arg-type]
    with pytest.raises(client.ApiException, match="403"):
        _python_client_forward(agent, ns, name, 8080, execer)

    # The port is the only input, and it is checked.
    for bad in ("0", "65536", "80a", "-1", ""):
        answer = agent.get(f"/portforward/{ns}/{name}?ports={bad}")
        assert answer.status_code == 400, (bad, answer.text)
        assert f"{bad!r} is not a port number (1-65535)" in answer.text, answer.text
    missing = agent.get(f"/portforward/{ns}/{name}")
    assert missing.status_code == 400 and "at least one port" in missing.text

    # No network, no forwarding: said plainly by the agent and by the CLI.
    answer = agent.get(f"/portforward/{ns}/{offline}?ports=8080")
    assert answer.status_code == 409
    assert "has no network (spec.network.mode is none)" in answer.text, answer.text
    entry = [str(Path(sys.executable).parent / "vmsandbox"), "--kubeconfig", str(kube.kubeconfig_path)]
    done = subprocess.run(
        [*entry, "port-forward", "-n", ns, offline, "8080"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "has no network (spec.network.mode is none)" in done.stderr, done.stderr
    assert agent.get(f"/portforward/{ns}/nosuch?ports=8080").status_code == 404

    # Nothing listens on the port: the error channel says so, as the kubelet's would.
    pf = _python_client_forward(agent, ns, name, 7, ADMIN_USER)
    sock = pf.socket(7)
    assert _recv_all(sock) == b""  # type: ignore[arg-type]
    error = wait_for("the port's error", lambda: pf.error(7))
    assert "error forwarding port 7" in error and "refused" in error.lower(), error


def test_port_forward_ports_parse() -> None:
    from vmsandbox.cli_portforward import PortSpecError, parse_pair
    from vmsandbox.node_agent.portforward import BadPorts, parse_ports

    assert parse_ports("ports=80,443&port=8080") == [80, 443, 8080]
    for query in ("ports=80,80", "ports=" + ",".join(str(p) for p in range(1, 40))):
        with pytest.raises(BadPorts):
            parse_ports(query)
    assert [parse_pair(s) for s in ("8080", "9090:8080", ":8080")] == [
        parse_pair("8080:8080"),
        parse_pair("9090:8080"),
        parse_pair("0:8080"),
    ]
    with pytest.raises(PortSpecError, match="'70000'"):
        parse_pair("70000")
    # kubectl finds the plugin by its name; it is the same command line.
    plugin = Path(sys.executable).parent / "kubectl-vmsandbox"
    argv = [str(plugin), "port-forward", "--help"]
    shown = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "[LOCAL:]REMOTE" in shown.stdout, shown.stderr


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_port_forward_and_resolvers_in_a_qemu_guest(
    net_agent: MakeAgent, cluster: Cluster, registry: Registry, topo: Topology, qemu_settings: dict[str, str]
) -> None:
    """One QEMU (TCG) guest: the tap on the bridge, the guest's address from the kernel command
    line, the container's resolv.conf from the guest agent, port-forwarding to the guest."""
    agent = net_agent(**qemu_settings)
    name = unique("pfq")
    command = f"cat /etc/resolv.conf; hostname; echo report-done; {SERVERS}"
    image = registry.busybox
    spec = {"image": image, "command": ["sh", "-c", command], "hypervisor": "qemu"}
    cluster.create_sandbox(name, spec, node=agent.node)
    status = cluster.wait_phase(name, "Running", "Failed", timeout=480)
    assert status["phase"] == "Running", f"{status}\nagent log:\n{agent.logs()[-4000:]}"
    ns = cluster.namespace

    def report() -> str | None:
        text = agent.get(f"/logs/{ns}/{name}").text
        return text if "report-done" in text else None

    assert wait_for("the guest's report", report, timeout=120).startswith(f"nameserver {DNS}\n{name}\n")

    tried: list[object] = []

    def fetch() -> bytes | None:
        pf = _python_client_forward(agent, ns, name, 8080, ADMIN_USER)
        sock = pf.socket(8080)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer = _recv_all(sock)  # type: ignore[arg-type]
        sock.close()
        tried[:] = [answer[:300], pf.error(8080)]
        return answer if PAGE.encode() in answer else None

    try:
        wait_for("a page through port-forwarding", fetch, timeout=120, interval=1.0)
    except AssertionError as exc:
        links = sh("ip", "netns", "exec", topo.node, "bridge", "link")  # a tap without carrier?
        raise AssertionError(f"{exc}: {tried}\n{links}") from None
    ip = cluster.status(name)["network"]["ip"]
    wait_for("no connection into the guest", lambda: _established_to(topo, ip) == [] or None, timeout=30)
