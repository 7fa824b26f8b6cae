"""LocalCluster starts, stops and fails without leaving processes or directories behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.leaks import processes_mentioning
from vmsandbox.devcluster import DevClusterError, KubeBinariesUnavailable, LocalCluster
from vmsandbox.devcluster.binaries import BIN_DIR_ENV, CACHE_ENV, find_binaries
from vmsandbox.devcluster.pytest_plugin import kube_required

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    try:
        return find_binaries(build=True)
    except KubeBinariesUnavailable as exc:
        if kube_required():
            raise
        pytest.skip(f"real Kubernetes API server unavailable: {exc}")


def _assert_nothing_left(cluster: LocalCluster, pids: list[int]) -> None:
    assert cluster.workdir is not None
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert processes_mentioning(str(cluster.workdir)) == []
    assert not cluster.workdir.exists()


def test_stop_ends_every_process_and_removes_the_workdir(bin_dir: Path) -> None:
    cluster = LocalCluster(crd_dir=None, bin_dir=bin_dir)
    with cluster:
        pids = [p.pid for p in cluster.processes]
        assert len(pids) == 3
        assert cluster.workdir is not None
        assert len(processes_mentioning(str(cluster.workdir))) >= 3
        assert cluster.http("GET", "/api/v1/namespaces/kube-system").json()["status"]["phase"] == "Active"
    _assert_nothing_left(cluster, pids)


def test_exception_in_the_with_block_still_stops_everything(bin_dir: Path) -> None:
    cluster = LocalCluster(crd_dir=None, bin_dir=bin_dir)
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="test body failed"), cluster:
        pids = [p.pid for p in cluster.processes]
        raise RuntimeError("test body failed")
    assert pids
    _assert_nothing_left(cluster, pids)


def test_missing_crd_dir_fails_before_anything_starts(bin_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    cluster = LocalCluster(crd_dir=missing, bin_dir=bin_dir)
    with pytest.raises(DevClusterError) as err:
        cluster.start()
    assert err.value.step == "install CRDs"
    assert str(missing) in str(err.value)
    assert cluster.processes == []
    assert cluster.workdir is None, "nothing was started or created"


def test_invalid_crd_is_rejected_naming_file_and_field(bin_dir: Path, tmp_path: Path) -> None:
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "broken.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: apiextensions.k8s.io/v1
            kind: CustomResourceDefinition
            metadata: {name: gadgets.example.com}
            spec:
              group: example.com
              scope: Namespaced
              names: {kind: Gadget, singular: gadget, plural: gadgets}
              versions:
                - name: v1
                  served: true
                  storage: true
                  schema:
                    openAPIV3Schema:
                      type: object
                      properties:
                        spec: {type: objectish}
            """
        )
    )
    cluster = LocalCluster(crd_dir=crds, bin_dir=bin_dir)
    with pytest.raises(DevClusterError) as err:
        cluster.start()
    message = str(err.value)
    assert "broken.yaml" in message
    assert 'properties[spec].type: Unsupported value: "objectish"' in message
    _assert_nothing_left(cluster, [])


def test_non_crd_document_is_rejected_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    from vmsandbox.devcluster import load_crds

    with pytest.raises(DevClusterError, match=r"pod\.yaml: expected a CustomResourceDefinition, got Pod"):
        load_crds(tmp_path)


def test_apiserver_crash_during_start_is_reported_with_its_log(bin_dir: Path, tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "etcd").symlink_to(bin_dir / "etcd")
    server = fake / "apiextensions-apiserver"
    server.write_text("#!/bin/sh\necho 'apiserver: cannot start: simulated failure' >&2\nexit 3\n")
    server.chmod(0o755)
    cluster = LocalCluster(crd_dir=None, bin_dir=fake)
    with pytest.raises(DevClusterError) as err:
        cluster.start()
    assert err.value.step == "start apiserver"
    assert "exited with status 3" in str(err.value)
    assert "simulated failure" in str(err.value)
    _assert_nothing_left(cluster, [])


def test_missing_binaries_without_build_name_the_build_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(BIN_DIR_ENV, raising=False)
    with pytest.raises(KubeBinariesUnavailable, match=r"build-apiserver\.sh"):
        find_binaries(build=False)
    monkeypatch.setenv(BIN_DIR_ENV, str(tmp_path))
    with pytest.raises(KubeBinariesUnavailable, match=BIN_DIR_ENV):
        find_binaries(build=False)


@pytest.mark.parametrize(("required", "outcome"), [("", "1 skipped"), ("1", "1 error")])
def test_kube_fixture_skips_or_fails_when_the_server_cannot_be_built(
    tmp_path: Path, required: str, outcome: str
) -> None:
    (tmp_path / "test_inner.py").write_text("def test_needs_kube(kube):\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k not in (BIN_DIR_ENV, "VMSANDBOX_REQUIRE_KUBE")}
    # An empty cache and an unusable mirror: the build fails at its first step, in well under a second.
    env.update({CACHE_ENV: str(tmp_path / "cache"), "VMSANDBOX_DEBIAN_MIRROR": "file:///nonexistent"})
    if required:
        env["VMSANDBOX_REQUIRE_KUBE"] = required
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "vmsandbox.devcluster.pytest_plugin",
            "-rs",
            "-q",
            "test_inner.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert outcome in result.stdout, result.stdout + result.stderr
    assert "apt update" in result.stdout, "the reason names the failed build step"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (optional)")
def test_kubectl_works_with_the_kubeconfig(kube: LocalCluster) -> None:
    def kubectl(*args: str, stdin: str = "", ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={kube.kubeconfig_path}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode == 0) == ok, result.stderr
        return result

    assert "namespace/kube-system" in kubectl("get", "namespaces", "-o", "name").stdout
    resources = kubectl("api-resources", "--no-headers").stdout
    for expected in ("nodes", "leases", "customresourcedefinitions"):
        assert expected in resources
    assert "devcluster" not in resources
    # Manifests go as JSON: create, apply (server-side too) and get work for core kinds.
    node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: kubectl-node\n  labels: {pool: a}\n"
    kubectl("create", "-f", "-", stdin=node)
    # Server-side apply conflicts are the real server's: another manager owns the label.
    conflict = kubectl(
        "apply", "--server-side", "-f", "-", stdin=node.replace("pool: a", "pool: b"), ok=False
    )
    assert "conflict with" in conflict.stderr
    kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=node.replace("pool: a", "pool: b")
    )
    assert kubectl("get", "nodes", "-l", "pool=b", "-o", "name").stdout.split() == ["node/kubectl-node"]
    kubectl("label", "node", "kubectl-node", "zone=z1")
    assert "zone=z1" in kubectl("get", "node", "kubectl-node", "--show-labels").stdout
    kubectl("delete", "node", "kubectl-node")
    # Client-side apply of a core kind twice: the second is a strategic merge patch.
    lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: l1, namespace: default}\n"
    kubectl("apply", "-f", "-", stdin=lease + "spec: {holderIdentity: a}\n")
    kubectl("apply", "-f", "-", stdin=lease + "spec: {holderIdentity: b}\n")
    assert kubectl("get", "lease", "l1", "-o", "jsonpath={.spec.holderIdentity}").stdout == "b"
    kubectl("delete", "lease", "l1")
    # Custom resources: kubectl validates through the server (422 names the field).
    kube.install_crds(Path(__file__).with_name("crds"))
    widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: kw, namespace: default}\n"
    rejected = kubectl("create", "-f", "-", stdin=widget + "spec: {color: red, size: 99}\n", ok=False)
    assert "spec.size" in rejected.stderr
    kubectl("apply", "-f", "-", stdin=widget + "spec: {color: red}\n")
    kubectl("apply", "-f", "-", stdin=widget + "spec: {color: red, size: 4}\n")
    assert kubectl("get", "widget", "kw", "-o", "jsonpath={.spec.size}").stdout == "4"
    assert "red" in kubectl("get", "widgets").stdout
    kubectl("delete", "widget", "kw")
    # Typed generator commands send protobuf: the front decodes a Namespace.
    kubectl("create", "namespace", "kubectl-made")
    assert "Active" in kubectl("get", "namespace", "kubectl-made").stdout
    kubectl("delete", "namespace", "kubectl-made")


def test_port_taken_between_pick_and_bind_is_retried(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from vmsandbox.devcluster import cluster as cluster_module

    real_free_ports = cluster_module.free_ports
    picks: list[list[int]] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]

        def first_pick_is_taken(count: int) -> list[int]:
            ports = real_free_ports(count)
            if not picks:
                ports[0] = taken  # etcd's client port
            picks.append(ports)
            return ports

        monkeypatch.setattr(cluster_module, "free_ports", first_pick_is_taken)
        with LocalCluster(crd_dir=None, bin_dir=bin_dir) as cluster:
            assert cluster.http("GET", "/api/v1/namespaces/default").status_code == 200
    assert len(picks) == 2


def _start_runner(bin_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    """``python -m vmsandbox.devcluster`` in the background; returns it and its kubeconfig."""
    env = {**os.environ, BIN_DIR_ENV: str(bin_dir)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    runner = subprocess.Popen(
        [sys.executable, "-m", "vmsandbox.devcluster", "--crds", str(Path(__file__).with_name("crds"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert runner.stdout is not None
    first = runner.stdout.readline()
    assert first.startswith("export KUBECONFIG="), first + (runner.stderr.read() if runner.stderr else "")
    return runner, Path(first.strip().split("=", 1)[1])


def test_runner_serves_until_interrupted_then_cleans_up(bin_dir: Path) -> None:
    import signal

    from kubernetes import client, config

    runner, kubeconfig = _start_runner(bin_dir)
    try:
        with config.new_client_from_config(config_file=str(kubeconfig)) as api_client:
            widgets = client.CustomObjectsApi(api_client).list_cluster_custom_object(
                "example.com", "v1", "widgets"
            )
        assert widgets["items"] == []
        assert len(processes_mentioning(str(kubeconfig.parent))) >= 3
    finally:
        runner.send_signal(signal.SIGINT)
        assert runner.wait(60) == 0
    assert processes_mentioning(str(kubeconfig.parent)) == []
    assert not kubeconfig.parent.exists()


def test_children_die_with_a_killed_parent(bin_dir: Path) -> None:
    """Even a SIGKILLed test run (a CI timeout) leaves no etcd, apiserver or front behind."""
    import signal
    import time

    runner, kubeconfig = _start_runner(bin_dir)
    workdir = kubeconfig.parent
    try:
        assert len(processes_mentioning(str(workdir))) >= 3
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        deadline = time.monotonic() + 10
        while processes_mentioning(str(workdir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_mentioning(str(workdir)) == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
