"""The ``vmsandbox`` command: backend choice, manifests, and apply/get/logs against the real API server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.operator.harness import get_sandbox, purge
from vmsandbox.cli import CLIError, choose_backend, load_manifests, main
from vmsandbox.devcluster.cluster import LocalCluster

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "hello.yaml"


def test_backend_prefers_cloud_hypervisor_then_qemu_then_process(tmp_path: Path) -> None:
    image = tmp_path
    ch = choose_backend(
        cloud_hypervisor="/usr/bin/cloud-hypervisor", qemu="/usr/bin/qemu", kvm=True, guest_image=image
    )
    assert ch.name == "cloud-hypervisor"
    no_kvm = choose_backend(
        cloud_hypervisor="/usr/bin/cloud-hypervisor", qemu="/usr/bin/qemu", kvm=False, guest_image=image
    )
    assert no_kvm.name == "qemu" and "/dev/kvm is not usable" in no_kvm.why and "TCG" in no_kvm.why
    no_ch = choose_backend(cloud_hypervisor=None, qemu="/usr/bin/qemu", kvm=True, guest_image=image)
    assert no_ch.name == "qemu" and "no cloud-hypervisor binary" in no_ch.why
    no_image = choose_backend(cloud_hypervisor=None, qemu="/usr/bin/qemu", kvm=True, guest_image=None)
    assert no_image.name == "process" and "vmsandbox-guest-image build" in no_image.why
    nothing = choose_backend(cloud_hypervisor=None, qemu=None, kvm=False, guest_image=None)
    assert nothing.name == "process" and "WITHOUT VM isolation" in nothing.why


def test_manifest_must_be_a_named_vmsandbox(tmp_path: Path) -> None:
    assert load_manifests(str(SAMPLE))[0]["metadata"]["name"] == "hello"
    bad = tmp_path / "pod.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    with pytest.raises(CLIError, match=r"document 1: expected apiVersion vmsandbox\.io/v1alpha1"):
        load_manifests(str(bad))
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("apiVersion: vmsandbox.io/v1alpha1\nkind: VMSandbox\nspec: {image: busybox}\n")
    with pytest.raises(CLIError, match=r"metadata\.name is required"):
        load_manifests(str(nameless))


class _Logs(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the guest\n" if self.path == "/logs/clitest/hello" else b"nope\n"
        self.send_response(200 if self.path == "/logs/clitest/hello" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def agent_http() -> Iterator[str]:
    """An HTTP server answering like an agent's /logs endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Logs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.kube
def test_apply_get_logs(kube: LocalCluster, capsys: pytest.CaptureFixture[str], agent_http: str) -> None:
    kube.http(
        "POST",
        "/api/v1/namespaces",
        json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "clitest"}},
    )
    cfg = ["--kubeconfig", str(kube.kubeconfig_path)]
    try:
        assert main([*cfg, "apply", "-f", str(SAMPLE), "-n", "clitest"]) == 0
        assert capsys.readouterr().out.strip() == "vmsandbox.vmsandbox.io/hello created"
        assert main([*cfg, "apply", "-f", str(SAMPLE), "-n", "clitest"]) == 0
        assert capsys.readouterr().out.strip() == "vmsandbox.vmsandbox.io/hello configured"
        obj = get_sandbox(kube, "clitest", "hello")
        assert obj is not None and obj["spec"]["resources"]["memoryMiB"] == 256

        assert main([*cfg, "get", "-n", "clitest"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["NAME", "PHASE", "NODE", "HYPERVISOR", "RESTARTS", "AGE", "REASON"]
        assert lines[1].split()[:5] == ["hello", "Pending", "<none>", "<none>", "0"]

        # Not scheduled yet: logs say so instead of guessing.
        assert main([*cfg, "logs", "hello", "-n", "clitest"]) == 1
        assert "not scheduled to a node yet" in capsys.readouterr().err

        # Placed on a node whose agent publishes its endpoint: logs come from there.
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "cli-node", "annotations": {"vmsandbox.io/agent-endpoint": agent_http}},
        }
        assert kube.http("POST", "/api/v1/nodes", json=node).status_code == 201
        patch = {"status": {"phase": "Succeeded", "nodeName": "cli-node"}}
        path = "/apis/vmsandbox.io/v1alpha1/namespaces/clitest/vmsandboxes/hello/status"
        kube.http("PATCH", path, json=patch, headers={"Content-Type": "application/merge-patch+json"})
        assert main([*cfg, "logs", "hello", "-n", "clitest"]) == 0
        assert capsys.readouterr().out == "hello from the guest\n"

        assert main([*cfg, "get", "hello", "-n", "clitest", "-o", "json"]) == 0
        assert '"phase": "Succeeded"' in capsys.readouterr().out
        assert main([*cfg, "delete", "hello", "-n", "clitest", "--wait", "--timeout", "10"]) == 0
        assert get_sandbox(kube, "clitest", "hello") is None
        assert main([*cfg, "get", "nope", "-n", "clitest"]) == 1
        assert "404" in capsys.readouterr().err
    finally:
        kube.http("DELETE", "/api/v1/nodes/cli-node")
        purge(kube, "clitest")
