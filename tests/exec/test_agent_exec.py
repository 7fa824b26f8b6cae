"""Exec and files through the node agent's port: the Kubernetes Python client's own WebSocket
client (the one ``kubernetes.stream.stream()`` drives) against ``/exec/<namespace>/<name>``, with
a real API server deciding who may (TokenReview + SubjectAccessReview), a real agent and runc."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from kubernetes import client
from kubernetes.stream.ws_client import WSClient, get_websocket_url

from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, unique
from tests.security.support import grant
from vmsandbox.devcluster.cluster import ADMIN_USER, LocalCluster
from vmsandbox.sdk.remote import Agent, ExecSession, RemoteError, list_path, read_path, write_path


def ws_exec(
    agent: AgentProcess, namespace: str, name: str, command: list[str], token: str = ADMIN_USER, **flags: bool
) -> WSClient:
    endpoint = agent.endpoint()
    assert endpoint
    config = client.Configuration()
    config.host = endpoint
    query = [("command", command)] + [
        (k, str(v).lower()) for k, v in {"stdout": True, "stderr": True, **flags}.items()
    ]
    url = get_websocket_url(f"{endpoint}/exec/{namespace}/{name}", query)
    return WSClient(config, url, headers={"authorization": f"Bearer {token}"}, capture_all=True, binary=True)


def run(
    agent: AgentProcess, namespace: str, name: str, command: list[str], stdin: bytes | None = None
) -> tuple[bytes, bytes, int]:
    ws = ws_exec(agent, namespace, name, command, stdin=stdin is not None)
    if stdin is not None:
        ws.write_stdin(stdin)
        ws.close_channel(0)  # v5: the end of stdin
    ws.run_forever(timeout=60)
    out, err = ws.read_stdout() or b"", ws.read_stderr() or b""
    code = ws.returncode
    ws.close()
    return out, err, code


@pytest.mark.kube
def test_exec_through_the_agent_with_the_kubernetes_client(
    running: tuple[AgentProcess, str], cluster: Cluster
) -> None:
    agent, name = running
    ns = cluster.namespace
    assert run(agent, ns, name, ["sh", "-c", "echo out; echo err >&2"]) == (b"out\n", b"err\n", 0)
    for code in (1, 3):
        assert run(agent, ns, name, ["sh", "-c", f"exit {code}"])[2] == code
    assert run(agent, ns, name, ["sh", "-c", "kill -9 $$"])[2] == 137
    data = bytes(range(256)) * 512
    assert run(agent, ns, name, ["cat"], stdin=data) == (data, b"", 0)


@pytest.mark.kube
def test_exec_needs_create_on_the_exec_subresource(
    running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster
) -> None:
    agent, name = running
    reader = unique("reader")
    grant(kube, cluster.namespace, reader, [("vmsandbox.io", "vmsandboxes/log", ["get"])])
    path = f"/exec/{cluster.namespace}/{name}?" + urlencode({"command": "true"})
    assert agent.get(path, token=None).status_code == 401
    denied = agent.get(path, token=reader)
    assert denied.status_code == 403
    assert f'user "{reader}" cannot create resource "vmsandboxes/exec"' in denied.text
    exec_user = unique("execer")
    assert agent.get(path, token=exec_user).status_code == 403
    # Refusals are not cached: the grant takes effect at once.
    grant(kube, cluster.namespace, exec_user, [("vmsandbox.io", "vmsandboxes/exec", ["create"])])
    assert run_as(agent, cluster.namespace, name, exec_user) == 0
    assert run_as(agent, cluster.namespace, name, exec_user) == 0  # the decision reused
    files = agent.get(f"/files/{cluster.namespace}/{name}?path=/bin&list=true", token=exec_user)
    assert files.status_code == 403 and "vmsandboxes/files" in files.text


def run_as(agent: AgentProcess, namespace: str, name: str, user: str) -> int:
    ws = ws_exec(agent, namespace, name, ["true"], token=user)
    ws.run_forever(timeout=60)
    code = ws.returncode
    ws.close()
    return int(code)


@pytest.mark.kube
def test_exec_on_a_sandbox_that_is_not_running_is_a_clear_error(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry
) -> None:
    agent = make_agent()
    name = unique("done")
    cluster.create_sandbox(name, registry.sandbox(["true"]), node=agent.node)
    cluster.wait_phase(name, "Succeeded", timeout=90)
    answer = agent.get(f"/exec/{cluster.namespace}/{name}?command=true")
    assert answer.status_code == 409
    assert f"sandbox {cluster.namespace}/{name} is Succeeded, not Running" in answer.text
    missing = agent.get(f"/exec/{cluster.namespace}/nope?command=true")
    assert missing.status_code == 404 and "no sandbox" in missing.text
    assert agent.get(f"/exec/{cluster.namespace}/{name}").status_code == 400  # no command


@pytest.mark.kube
def test_files_through_the_agent(running: tuple[AgentProcess, str], cluster: Cluster) -> None:
    agent, name = running
    endpoint = agent.endpoint()
    base = f"{endpoint}/files/{cluster.namespace}/{name}"
    auth = {"Authorization": f"Bearer {ADMIN_USER}"}
    payload = bytes(range(256)) * 8192
    put = requests.put(
        base, params={"path": "/up/data.bin", "mode": "0600"}, data=payload, headers=auth, timeout=60
    )
    assert put.status_code == 400 and "path: /up/data.bin: No such file" in put.text  # no /up yet
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("d/x.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    put = requests.put(
        base, params={"path": "/up", "kind": "tar"}, data=archive.getvalue(), headers=auth, timeout=60
    )
    assert put.status_code == 200, put.text
    put = requests.put(
        base, params={"path": "/up/data.bin", "mode": "0600"}, data=payload, headers=auth, timeout=60
    )
    assert put.status_code == 200, put.text
    got = requests.get(base, params={"path": "/up/data.bin"}, headers=auth, timeout=60)
    assert (got.status_code, got.headers["X-Vmsandbox-Kind"], got.content == payload) == (200, "file", True)
    tree = requests.get(base, params={"path": "/up"}, headers=auth, timeout=60)
    assert tree.headers["X-Vmsandbox-Kind"] == "dir"
    with tarfile.open(fileobj=io.BytesIO(tree.content)) as tar:
        assert sorted(tar.getnames()) == ["d", "d/x.txt", "data.bin"]
    listing = requests.get(base, params={"path": "/up", "list": "true"}, headers=auth, timeout=60).json()
    assert [(e["name"], e["kind"]) for e in listing["entries"]] == [("d", "dir"), ("data.bin", "file")]
    bad = requests.get(base, params={"path": "relative"}, headers=auth, timeout=60)
    assert bad.status_code == 400 and "absolute path" in bad.text


@pytest.mark.kube
def test_a_large_file_through_the_agent_is_byte_identical_both_ways(
    running: tuple[AgentProcess, str], cluster: Cluster
) -> None:
    """Many full 1 MiB chunks and a short last one, spliced through both agents without a copy:
    an uneven upload (chunked, as the CLI sends it) and the read back must match exactly."""
    agent, name = running
    endpoint = agent.endpoint()
    assert endpoint
    remote = Agent(endpoint, {"Authorization": f"Bearer {ADMIN_USER}"})
    data = os.urandom(21 * 1024 * 1024 + 4321)
    pieces = (data[i : i + 777_777] for i in range(0, len(data), 777_777))
    write_path(remote, cluster.namespace, name, "/big.bin", pieces)
    with read_path(remote, cluster.namespace, name, "/big.bin") as (kind, chunks):
        got = b"".join(chunks)
    assert kind == "file" and len(got) == len(data) and got == data
    (entry,) = list_path(remote, cluster.namespace, name, "/big.bin")
    assert (entry["kind"], entry["size"]) == ("file", len(data))


@pytest.mark.kube
def test_an_open_file_is_uploaded_from_its_position_with_its_length(
    running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster, tmp_path: Path
) -> None:
    """An open file goes by sendfile with a Content-Length (spliced on by the node agent, apart
    from what its reader buffered with the headers); a pipe goes chunked; a refusal arrives
    as its status even while a large body is still being sent."""
    agent, name = running
    endpoint = agent.endpoint()
    assert endpoint
    remote = Agent(endpoint, {"Authorization": f"Bearer {ADMIN_USER}"})
    data = os.urandom(9 * 1024 * 1024 + 123)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    with local.open("rb") as file:
        file.seek(5)
        write_path(remote, cluster.namespace, name, "/sent.bin", file)
    with read_path(remote, cluster.namespace, name, "/sent.bin") as (_, chunks):
        assert b"".join(chunks) == data[5:]
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as source:
        os.write(write_end, data[:60_000])  # less than a pipe holds
        os.close(write_end)
        write_path(remote, cluster.namespace, name, "/piped.bin", source)
    with read_path(remote, cluster.namespace, name, "/piped.bin") as (_, chunks):
        assert b"".join(chunks) == data[:60_000]
    outsider = Agent(endpoint, {"Authorization": f"Bearer {unique('outsider')}"})
    with local.open("rb") as file, pytest.raises(RemoteError) as refused:
        write_path(outsider, cluster.namespace, name, "/sent.bin", file)
    assert refused.value.status == 403 and "vmsandboxes/files" in refused.value.detail
    with pytest.raises(RemoteError) as missing:
        write_path(remote, cluster.namespace, name, "/no/such/dir/x.bin", io.BytesIO(data))
    assert missing.value.status == 400 and "No such file" in missing.value.detail


def test_attach_follows_the_main_process_to_its_exit(
    make_agent: MakeAgent, cluster: Cluster, registry: Registry, kube: LocalCluster
) -> None:
    agent = make_agent()
    name = unique("attach")
    main = ["sh", "-c", "echo started; sleep 3; echo done >&2; exit 4"]
    cluster.create_sandbox(name, registry.sandbox(main), node=agent.node)
    cluster.wait_phase(name, "Running", timeout=90)
    endpoint = agent.endpoint()
    assert endpoint
    remote = Agent(endpoint, {"Authorization": f"Bearer {ADMIN_USER}"})
    out, err = b"", b""
    with ExecSession(remote, cluster.namespace, name, [], stdin=False, tty=False) as session:
        for channel, data in session.output():
            if channel == 1:
                out += data
            else:
                err += data
        assert (out, err, session.exit_code) == (b"started\n", b"done\n", 4)
    watcher = unique("watcher")
    grant(kube, cluster.namespace, watcher, [("vmsandbox.io", "vmsandboxes/exec", ["create"])])
    denied = agent.get(f"/attach/{cluster.namespace}/{name}", token=watcher)
    assert denied.status_code == 403 and "vmsandboxes/attach" in denied.text
