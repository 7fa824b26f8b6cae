"""The API path: ``subresources.vmsandbox.io`` served by a real operator process, routed by the
local control plane's aggregator, to a real agent running a process-backend sandbox.

What goes through the API server is read back from its request log; the operator's server is
also called directly, as an attacker on the network would, to see it refuse."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from kubernetes.stream import stream
from kubernetes.stream.ws_client import STDERR_CHANNEL, STDOUT_CHANNEL

from tests.chart.helm import missing
from tests.e2e.processes import OperatorProcess
from tests.exec.test_cli import cli, exec_it, program
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, free_port, unique, wait_for
from vmsandbox.api.constants import SUBRESOURCE_GROUP, SUBRESOURCE_VERSION
from vmsandbox.devcluster.apiservice import API_SERVICE_NAME, operator_settings, register, serving_certificate
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.tls import make_ca, sign_certificate
from vmsandbox.sdk.client import Client
from vmsandbox.sdk.remote import Agent, ExecSession

BASE = f"/apis/{SUBRESOURCE_GROUP}/{SUBRESOURCE_VERSION}"
pytestmark = pytest.mark.kube


class ApiPath:
    """The operator serving the group on ``port``, registered with the API server."""

    def __init__(self, operator: OperatorProcess, port: int, ca: Path) -> None:
        self.operator = operator
        self.port = port
        self.ca = ca

    def url(self, namespace: str, name: str, sub: str) -> str:
        return f"https://127.0.0.1:{self.port}{BASE}/namespaces/{namespace}/vmsandboxes/{name}/{sub}"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def api_path(kube: LocalCluster, cluster: Cluster, tmp_path: Path) -> Iterator[ApiPath]:
    ca, cert, key = serving_certificate(tmp_path / "serving", cluster.namespace)
    port = free_port()
    settings = {
        k.removeprefix("VMSANDBOX_OPERATOR_").lower(): v
        for k, v in operator_settings(port, cert, key).items()
    }
    operator = OperatorProcess(
        kube,
        cluster.namespace,
        unique("op"),
        tmp_path,
        leader_election="false",
        allowed_hypervisors="cloud-hypervisor,qemu",  # the QEMU guest's test uses this fixture too
        **settings,  # type: ignore[arg-type]
    )
    try:
        wait_for("the aggregated server", lambda: _listening(port) or None, timeout=60)
        register(kube.http, cluster.namespace, port, ca)
        wait_for("the API path", lambda: kube.http("GET", BASE).status_code == 200 or None, timeout=30)
        yield ApiPath(operator, port, ca)
    finally:
        kube.http("DELETE", f"/apis/apiregistration.k8s.io/v1/apiservices/{API_SERVICE_NAME}")
        assert operator.stop() == 0, operator.log()[-3000:]
    assert not _listening(port)


def _through_api(kube: LocalCluster, since: int, sub: str, count: int | None = None) -> list[int]:
    """Statuses of the API server's requests for ``vmsandboxes/<sub>`` of the aggregated group
    (waiting for ``count`` of them: a WebSocket is logged once its session has ended)."""

    def statuses() -> list[int]:
        return [
            r.status
            for r in kube.requests_made(since)
            if r.group == SUBRESOURCE_GROUP and r.resource == "vmsandboxes" and r.subresource == sub
        ]

    if count is not None:
        with contextlib.suppress(AssertionError):
            wait_for(f"{count} {sub} requests logged", lambda: len(statuses()) >= count or None, timeout=10)
    return statuses()


def test_exec_files_and_logs_through_the_api_server(
    api_path: ApiPath,
    running: tuple[AgentProcess, str],
    cluster: Cluster,
    kube: LocalCluster,
    tmp_path: Path,
) -> None:
    _, name = running
    ns = cluster.namespace
    since = len(kube.requests_made())
    done = cli(kube, "exec", "-n", ns, name, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    fed = cli(kube, "exec", "-i", "-n", ns, name, "--", "cat", input=b"piped\n" * 1000)
    assert (fed.returncode, fed.stdout) == (0, b"piped\n" * 1000)
    assert _through_api(kube, since, "exec", 2) == [101, 101]

    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a\n")
    blob = bytes(range(256)) * 8192
    (src / "blob").write_bytes(blob)
    assert cli(kube, "cp", "-n", ns, str(src), f"{name}:/copied").returncode == 0
    back = tmp_path / "back"
    copied = cli(kube, "cp", "-n", ns, f"{name}:/copied", str(back))
    assert copied.returncode == 0, copied.stderr
    assert (back / "blob").read_bytes() == blob and (back / "sub" / "a.txt").read_text() == "a\n"
    listing = cli(kube, "ls", "-n", ns, f"{name}:/copied")
    assert b" blob" in listing.stdout
    assert _through_api(kube, since, "files", 3) == [200, 200, 200]

    direct = cli(kube, "--direct", "exec", "-n", ns, name, "--", "true")
    assert direct.returncode == 0 and len(_through_api(kube, since, "exec")) == 2

    # portforward is relayed as is to the agent's /portforward route (404 where the agent has none).
    forward = requests.get(
        f"{kube.tls_url}{BASE}/namespaces/{ns}/vmsandboxes/{name}/portforward",
        headers=_admin_headers(kube),
        verify=str(_front_ca(kube)),
        timeout=30,
    )
    assert forward.status_code in (400, 404, 426), forward.text
    assert _through_api(kube, since, "portforward", 1) == [forward.status_code]

    with Client(namespace=ns, kubeconfig=str(kube.kubeconfig_path)) as client:
        box = client.sandbox(name)
        assert box.agent().api_path
        result = box.run(["sh", "-c", "echo sdk; exit 1"])
        assert (result.stdout, result.exit_code) == (b"sdk\n", 1)
    assert len(_through_api(kube, since, "exec", 3)) == 3


def test_a_file_larger_than_the_front_holds_is_copied_through_the_api_server(
    api_path: ApiPath, running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster, tmp_path: Path
) -> None:
    """The API server's proxy streams a request body to the aggregated server: a 100 MiB ``cp``
    (more than the front would read into memory) arrives and comes back byte-identical."""
    _, name = running
    round_trip(kube, cluster.namespace, name, "/big.bin", os.urandom(100 * 1024 * 1024 + 17), tmp_path)


def round_trip(kube: LocalCluster, ns: str, name: str, remote: str, data: bytes, tmp_path: Path) -> None:
    """``vmsandbox cp`` of ``data`` to ``name:remote`` and back, byte-identical."""
    (tmp_path / "up.bin").write_bytes(data)
    up = cli(kube, "cp", "-n", ns, str(tmp_path / "up.bin"), f"{name}:{remote}")
    assert up.returncode == 0, up.stderr
    down = cli(kube, "cp", "-n", ns, f"{name}:{remote}", str(tmp_path / "back.bin"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back.bin").read_bytes() == data


def test_attach_and_logs_through_the_api_server(
    api_path: ApiPath, make_agent: MakeAgent, cluster: Cluster, registry: Registry, kube: LocalCluster
) -> None:
    agent = make_agent()
    name = unique("ticker")
    script = "echo ready; while true; do sleep 0.2; echo tick; done"
    cluster.create_sandbox(
        name,
        {"image": f"{registry.host}/test/busybox:latest", "command": ["sh", "-c", script]},
        node=agent.node,
    )
    cluster.wait_phase(name, "Running", timeout=90)
    since = len(kube.requests_made())
    gate = Agent(kube.tls_url, _admin_headers(kube), api_path=True, verify=str(_front_ca(kube)), cert=None)
    with ExecSession(gate, cluster.namespace, name, [], stdin=False, tty=False) as session:
        seen = b""
        for channel, data in session.output():
            assert channel == 1
            seen += data
            if b"tick\ntick\n" in seen:
                break
    assert _through_api(kube, since, "attach", 1) == [101]

    def logged() -> bytes | None:
        out = cli(kube, "logs", "-n", cluster.namespace, name, "--tail-bytes", "4096")
        return out.stdout if out.returncode == 0 and b"tick" in out.stdout else None

    assert b"tick\n" in wait_for("the log", logged, timeout=20)
    assert _through_api(kube, since, "log")[-1] == 200


def _admin_headers(kube: LocalCluster) -> dict[str, str]:
    cfg = kube.api_client().configuration
    value = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    assert value
    return {"Authorization": value if " " in value else f"Bearer {value}"}


def _front_ca(kube: LocalCluster) -> Path:
    assert kube.workdir is not None
    return kube.workdir / "front-tls" / "front.crt"


def test_a_user_without_create_exec_is_refused_on_both_paths(
    api_path: ApiPath, running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster
) -> None:
    agent, name = running
    ns = cluster.namespace
    user = unique("tenant")
    config = kube.kubeconfig_for(user)
    since = len(kube.requests_made())
    api = subprocess.run(
        [*program(), "--kubeconfig", str(config), "exec", "-n", ns, name, "--", "true"],
        capture_output=True,
        timeout=60,
    )
    assert api.returncode == 1 and b"403" in api.stderr, api.stderr
    headers = {"Authorization": f"Bearer {user}"}
    gate = Agent(kube.tls_url, headers, api_path=True, verify=str(_front_ca(kube)))
    with pytest.raises(Exception, match="403") as refused:
        ExecSession(gate, ns, name, ["true"], stdin=False, tty=False)
    assert getattr(refused.value, "status", None) == 403
    assert _through_api(kube, since, "exec", 2) == [403, 403]
    endpoint = agent.endpoint()
    assert endpoint is not None
    with pytest.raises(Exception, match="cannot create") as direct:
        ExecSession(Agent(endpoint, headers), ns, name, ["true"], stdin=False, tty=False)
    assert getattr(direct.value, "status", None) == 403

    # `get` alone on vmsandboxes/exec is not enough for a WebSocket exec; get+create is.
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": f"{user}-exec", "namespace": ns},
        "rules": [{"apiGroups": [SUBRESOURCE_GROUP], "resources": ["vmsandboxes/exec"], "verbs": ["get"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"{user}-exec", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{user}-exec"},
        "subjects": [{"kind": "User", "name": user}],
    }
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    assert kube.http("POST", f"{rbac}/roles", json=role).status_code == 201
    assert kube.http("POST", f"{rbac}/rolebindings", json=binding).status_code == 201
    with pytest.raises(Exception, match="403"):
        ExecSession(gate, ns, name, ["true"], stdin=False, tty=False)
    role["rules"][0]["verbs"] = ["get", "create"]  # type: ignore[index]
    current = kube.http("GET", f"{rbac}/roles/{user}-exec").json()
    role["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]  # type: ignore[index]
    assert kube.http("PUT", f"{rbac}/roles/{user}-exec", json=role).status_code == 200
    with ExecSession(gate, ns, name, ["sh", "-c", "echo allowed"], stdin=False, tty=False) as session:
        assert b"".join(d for _, d in session.output()) == b"allowed\n"
        assert session.exit_code == 0


def test_the_aggregated_server_refuses_what_did_not_come_through_the_api_server(
    api_path: ApiPath, running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster, tmp_path: Path
) -> None:
    _, name = running
    url = api_path.url(cluster.namespace, name, "files") + "?" + urlencode({"path": "/", "list": "true"})
    forged = {"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"}
    # No client certificate, with or without forged identity headers, or a bearer token: 401.
    for headers in ({}, forged, {**forged, **_admin_headers(kube)}):
        resp = requests.get(url, headers=headers, verify=str(api_path.ca), timeout=10)
        assert resp.status_code == 401, resp.text
        assert resp.json()["reason"] == "Unauthorized"
    # A client certificate from another CA: the server ends the TLS session (alert, or a reset under TLS 1.3).
    other = make_ca(tmp_path / "other", "other")
    stranger = sign_certificate(other, tmp_path / "other", "front-proxy-client", client=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(
            url,
            headers=forged,
            verify=str(api_path.ca),
            cert=(str(stranger[0]), str(stranger[1])),
            timeout=10,
        )
    # The right CA but a name the API server does not use: 401.
    wrong_name = sign_certificate(kube.requestheader_ca, tmp_path / "signed", "mallory", client=True)
    resp = requests.get(
        url,
        headers=forged,
        verify=str(api_path.ca),
        cert=(str(wrong_name[0]), str(wrong_name[1])),
        timeout=10,
    )
    assert resp.status_code == 401 and "not an allowed front proxy" in resp.text
    # The API server's own client certificate does work (what the front presents).
    assert kube.workdir is not None
    front = (
        str(kube.workdir / "front-proxy" / "front-proxy-client.crt"),
        str(kube.workdir / "front-proxy" / "front-proxy-client.key"),
    )
    resp = requests.get(url, headers=forged, verify=str(api_path.ca), cert=front, timeout=10)
    assert resp.status_code == 200 and "entries" in resp.json()
    assert "system:admin: GET files" in api_path.operator.log()


def test_the_kubernetes_client_stream_works_against_the_api_path(
    api_path: ApiPath, running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster
) -> None:
    _, name = running
    api_client = kube.api_client()

    class SandboxApi:
        """A hand-written 'generated' method, as stream() expects of one."""

        def __init__(self) -> None:
            self.api_client = api_client

        def connect_exec(self, namespace: str, sandbox: str, command: list[str], **_: object) -> object:
            query = urlencode([("command", c) for c in command] + [("stdout", "true"), ("stderr", "true")])
            url = f"{api_client.configuration.host}{BASE}/namespaces/{namespace}/vmsandboxes/{sandbox}/exec"
            auth = _admin_headers(kube)["Authorization"]
            # As a generated method with _preload_content=False: the raw response.
            raw = api_client.call_api("GET", f"{url}?{query}", header_params={"authorization": auth})
            return raw.response

    since = len(kube.requests_made())
    out = stream(SandboxApi().connect_exec, cluster.namespace, name, ["sh", "-c", "echo via-client"])
    assert out == "via-client\n"
    live = stream(
        SandboxApi().connect_exec,
        cluster.namespace,
        name,
        ["sh", "-c", "echo one; echo two >&2; exit 4"],
        _preload_content=False,
    )
    live.run_forever(timeout=30)
    assert live.read_channel(STDOUT_CHANNEL) == "one\n" and live.read_channel(STDERR_CHANNEL) == "two\n"
    assert live.returncode == 4
    live.close()
    assert _through_api(kube, since, "exec", 2) == [101, 101]


class Tmux:
    """A tmux server of the test's own (its own socket), holding one session."""

    def __init__(self, socket_path: Path) -> None:
        self.base = ["tmux", "-S", str(socket_path)]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "s")

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        def shown() -> str | None:
            screen = self.screen()
            return screen if text in screen else None

        try:
            return wait_for(f"{text!r} on the screen", shown, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{self.screen()}") from None


def test_an_interactive_shell_in_tmux_through_the_api_server(
    api_path: ApiPath, running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster, tmp_path: Path
) -> None:
    """tmux plays the user's terminal: prompt, a command, a window resize seen by ``stty size``,
    Ctrl-C interrupting the foreground command but not the shell, and the exit status."""
    if shutil.which("tmux") is None:
        missing("tmux is not installed (hack/setup.sh installs it)")
    _, name = running
    since = len(kube.requests_made())
    tmux = Tmux(tmp_path / "tmux.sock")
    status = tmp_path / "status"
    shell = ("sh", "-i", ";", "echo", "$?", ">", str(status))
    command = " ".join(exec_it(program(), kube, cluster.namespace, name, *shell))
    tmux("new-session", "-d", "-s", "s", "-x", "100", "-y", "30", "sh", "-c", command)
    tmux("set-option", "-t", "s", "remain-on-exit", "on")
    try:
        tmux.wait_for("/ #")  # capture-pane drops the trailing space
        tmux("send-keys", "-t", "s", "echo $((6*7))", "Enter")
        tmux.wait_for("42")
        tmux("send-keys", "-t", "s", "stty size", "Enter")
        tmux.wait_for("30 100")
        tmux("resize-window", "-t", "s", "-x", "120", "-y", "40")
        tmux("send-keys", "-t", "s", "clear; stty size", "Enter")
        tmux.wait_for("40 120")
        tmux("send-keys", "-t", "s", "clear; sleep 100", "Enter")
        time.sleep(1.0)
        tmux("send-keys", "-t", "s", "C-c")  # to the remote terminal: sleep dies, the shell lives
        tmux("send-keys", "-t", "s", "echo after-$?", "Enter")
        tmux.wait_for("after-130")
        tmux("send-keys", "-t", "s", "exit 7", "Enter")
        wait_for(
            "the CLI to exit", lambda: (status.exists() and status.read_text().strip()) or None, timeout=30
        )
        assert status.read_text().strip() == "7"
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True, timeout=30)
    assert _through_api(kube, since, "exec", 1) == [101]
