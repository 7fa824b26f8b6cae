"""The agent's /logs: a bearer token the API server accepts (TokenReview) of a user allowed
``get vmsandboxes/log`` in the sandbox's namespace (SubjectAccessReview); 401/403 otherwise.
Logs are streamed (tailBytes, follow) and rotated at a configurable size. The chart admits the
agent's port only from the listed peers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chart.helm import by_kind, get_helm, one
from tests.e2e.processes import OperatorProcess
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, unique
from tests.security.support import Tenant, grant
from vmsandbox.cli import main as cli
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.runtime.logfiles import LogLimits, RotatingLog, log_files, rotate_foreign

LINES = 2000  # "line 0000 ...", 64 bytes each: 128000 bytes, more than one read chunk


def _line(i: int) -> bytes:
    return f"line {i:04d} {'x' * 53}\n".encode()


def _print_lines(count: int, pause: float = 0.0) -> list[str]:
    loop = f"i=0; while [ $i -lt {count} ]; do printf 'line %04d %s\\n' $i {'x' * 53}; "
    loop += f"sleep {pause}; " if pause else ""
    return ["sh", "-c", loop + "i=$((i+1)); done"]


def _printing(cluster: Cluster, registry: Registry, prefix: str, count: int, pause: float = 0.0) -> str:
    """The name of a new sandbox that prints ``count`` lines as :func:`_line` makes them."""
    name = unique(prefix)
    cluster.create_sandbox(name, registry.sandbox(_print_lines(count, pause)))
    return name


@pytest.fixture
def reader(kube: LocalCluster, cluster: Cluster) -> str:
    """A user allowed to read sandbox logs in the test's namespace (and nothing else)."""
    user = unique("reader")
    grant(kube, cluster.namespace, user, [("vmsandbox.io", "vmsandboxes/log", ["get"])])
    return user


@pytest.fixture
def agent(operator: OperatorProcess, make_agent: MakeAgent) -> AgentProcess:
    """The node agent the logs are read from, with the operator running to place sandboxes on it."""
    return make_agent()


@pytest.mark.kube
def test_logs_need_a_token_of_a_user_allowed_to_read_them(
    cluster: Cluster, tenant: Tenant, reader: str, registry: Registry, agent: AgentProcess
) -> None:
    name = _printing(cluster, registry, "logs", LINES)
    assert cluster.wait_phase(name, "Succeeded", "Failed", timeout=90)["phase"] == "Succeeded"
    path = f"/logs/{cluster.namespace}/{name}"

    anonymous = agent.get(path, token=None)
    assert anonymous.status_code == 401 and "bearer token" in anonymous.text
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert agent.get("/logs/other/whatever", token=None).status_code == 401  # says nothing of what exists
    assert agent.get("/anything-else", token=None).status_code == 401
    assert agent.get("/anything-else", token=tenant.user).status_code == 404
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert agent.get(open_path, token=None).status_code == 200

    # The tenant may create and read their sandboxes, but not their logs.
    denied = agent.get(path, token=tenant.user)
    assert denied.status_code == 403, denied.text
    assert f'user "{tenant.user}" cannot get resource "vmsandboxes/log"' in denied.text
    assert f'namespace "{cluster.namespace}"' in denied.text and "line 0000" not in denied.text
    # The reader may read logs in this namespace only.
    assert agent.get(f"/logs/default/{name}", token=reader).status_code == 403

    with agent.get(path, token=reader, stream=True) as resp:
        assert resp.status_code == 200 and "Content-Length" not in resp.headers  # streamed
        chunks = list(resp.iter_content(chunk_size=None))
    body = b"".join(chunks)
    assert body == b"".join(_line(i) for i in range(LINES))

    tail = agent.get(f"{path}?tailBytes=130", token=reader)
    assert (
        tail.status_code == 200
        and tail.content == (_line(LINES - 3) + _line(LINES - 2) + _line(LINES - 1))[-130:]
    )
    assert agent.get(f"{path}?tailBytes=0", token=reader).content == b""
    assert agent.get(f"{path}?tailBytes=-1", token=reader).status_code == 400
    assert agent.get(f"{path}?follow=maybe", token=reader).status_code == 400


@pytest.mark.kube
def test_follow_streams_while_the_sandbox_runs(
    cluster: Cluster, reader: str, registry: Registry, agent: AgentProcess
) -> None:
    count = 30
    name = _printing(cluster, registry, "follow", count, pause=0.5)
    cluster.wait_phase(name, "Running", timeout=90)
    got = b""
    arrivals: list[float] = []
    with agent.get(
        f"/logs/{cluster.namespace}/{name}?follow=true", token=reader, stream=True, timeout=60
    ) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_content(chunk_size=None):
            got += chunk
            arrivals.append(time.monotonic())
            if len(arrivals) == 1:
                assert cluster.status(name)["phase"] == "Running", "followed output arrives while it runs"
    assert arrivals[-1] - arrivals[0] > 3, "the output came in pieces as it was written, not at the end"
    # The stream ended by itself once the sandbox finished, with every line.
    assert got == b"".join(_line(i) for i in range(count))
    assert cluster.status(name)["phase"] == "Succeeded"


@pytest.mark.kube
def test_logs_rotate_at_the_configured_size(
    operator: OperatorProcess, make_agent: MakeAgent, cluster: Cluster, reader: str, registry: Registry
) -> None:
    limit = 8192
    agent = make_agent(VMSANDBOX_AGENT_LOG_MAX_BYTES=str(limit), VMSANDBOX_AGENT_LOG_MAX_FILES="2")
    name = _printing(cluster, registry, "rotate", LINES)
    status = cluster.wait_phase(name, "Succeeded", "Failed", timeout=90)
    assert status["phase"] == "Succeeded"
    uid = cluster.get(name)["metadata"]["uid"]  # type: ignore[index]
    directory = agent.state_dir / "sandboxes" / uid
    files = sorted(p.name for p in directory.glob("container.log*"))
    assert files == ["container.log", "container.log.1"], files
    assert all((directory / f).stat().st_size <= limit for f in files)
    body = agent.get(f"/logs/{cluster.namespace}/{name}", token=reader).content
    assert len(body) <= 2 * limit and body.endswith(_line(LINES - 1))
    assert b"".join(_line(i) for i in range(LINES)).endswith(body)  # the newest bytes, in order


@pytest.mark.kube
@pytest.mark.usefixtures("agent")
def test_vmsandbox_logs_sends_the_kubeconfig_credentials(
    kube: LocalCluster, cluster: Cluster, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _printing(cluster, registry, "cli", 3)
    cluster.wait_phase(name, "Succeeded", timeout=90)
    cfg = ["--kubeconfig", str(kube.kubeconfig_path)]
    capsys.readouterr()
    assert cli([*cfg, "logs", name, "-n", cluster.namespace]) == 0
    assert capsys.readouterr().out.encode() == _line(0) + _line(1) + _line(2)
    assert cli([*cfg, "logs", name, "-n", cluster.namespace, "--tail-bytes", "64"]) == 0
    assert capsys.readouterr().out.encode() == _line(2)
    assert cli([*cfg, "logs", name, "-n", cluster.namespace, "-f"]) == 0  # finished: ends at once
    assert capsys.readouterr().out.encode().endswith(_line(2))


def test_chart_admits_the_agent_port_only_from_listed_peers(tmp_path: Path) -> None:
    helm = get_helm()
    default = one(helm.render(), "NetworkPolicy")
    daemonset = one(helm.render(), "DaemonSet")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    selector = default["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert default["spec"]["policyTypes"] == ["Ingress"] and default["spec"]["ingress"] == []
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    values = tmp_path / "values.yaml"
    values.write_text(
        "agent:\n  networkPolicy:\n    enabled: true\n    from:\n      - "
        + str(peer).replace("'", '"')
        + "\n"
    )
    listed = one(helm.render([values]), "NetworkPolicy")
    assert listed["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}], "from": [peer]}]
    values.write_text("agent:\n  networkPolicy:\n    enabled: false\n")
    assert by_kind(helm.render([values]), "NetworkPolicy") == []


def test_a_log_the_relay_writes_never_passes_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "container.log"
    limits = LogLimits(max_bytes=100, max_files=2)
    log = RotatingLog(path, limits)
    for i in range(30):
        log.write(b"%02d" % i * 5)  # 10 bytes
    log.write(b"x" * 250)  # longer than a whole file
    log.close()
    assert [p.name for p in log_files(path, limits)] == ["container.log.1", "container.log"]
    assert path.with_name("container.log.1").read_bytes() == b"x" * 100
    assert path.read_bytes() == b"x" * 50
    assert not path.with_name("container.log.2").exists()


def test_a_serial_log_the_vmm_holds_open_is_rotated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    limits = LogLimits(max_bytes=1000, max_files=2)
    with path.open("ab", buffering=0) as vmm:  # the VMM's descriptor, opened in append mode
        vmm.write(b"a" * 999)
        assert not rotate_foreign(path, limits)
        vmm.write(b"b" * 100)
        assert rotate_foreign(path, limits)
        vmm.write(b"after\n")
        vmm.write(b"c" * 1500)
        assert rotate_foreign(path, limits)
    assert path.stat().st_size == 0
    assert path.with_name("serial.log.1").read_bytes() == b"after\n" + b"c" * 1500
    assert not path.with_name("serial.log.2").exists()
