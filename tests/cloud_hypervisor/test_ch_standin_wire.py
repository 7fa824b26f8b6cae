"""The stand-in reproduces the real server's wire behaviour that the driver relies on (Cloud
Hypervisor's ``vmm/src/api/http`` over micro_http, and its hybrid-vsock muxer): if these drift,
the driver tests stop meaning anything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud_hypervisor.conftest import STANDIN_BINARY, Workspace, http, read_response
from vmsandbox.hypervisor.cloud_hypervisor.client import CloudHypervisorClient, error_messages
from vmsandbox.hypervisor.cloud_hypervisor.errors import ApiError
from vmsandbox.hypervisor.cloud_hypervisor.vmconfig import (
    ConsoleConfig,
    DiskConfig,
    PayloadConfig,
    VmConfig,
    VsockConfig,
)


class Standin:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.api = ws.root / "api.sock"
        self.vsock = ws.root / "vsock.sock"
        self.log = ws.root / "standin.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(STANDIN_BINARY), "--api-socket", f"path={self.api}", "--seccomp", "false", "-v"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while True:  # like a client of the real VMM: the API is up once vmm.ping answers
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the stand-in never answered vmm.ping"
            try:
                if http(self.api, "GET", "vmm.ping")[0] == 200:
                    break
            except OSError:
                time.sleep(0.01)

    def call(self, method: str, endpoint: str, body: object = None) -> tuple[int, dict[str, str], bytes]:
        payload = None if body is None else json.dumps(body)
        return http(self.api, method, endpoint, payload)

    def vm_config(self) -> dict[str, object]:
        return {
            "payload": {"kernel": str(self.ws.kernel), "cmdline": "console=ttyS0"},
            "vsock": {"cid": 3, "socket": str(self.vsock)},
            "serial": {"mode": "Off"},
            "console": {"mode": "Off"},
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        self.vsock.unlink(missing_ok=True)
        self.api.unlink(missing_ok=True)
        Path(f"{self.api}.lock").unlink(missing_ok=True)


@pytest.fixture
def standin(workspace: Workspace, echo_guest: None) -> Iterator[Standin]:
    server = Standin(workspace)
    try:
        yield server
    finally:
        server.stop()


def test_204_has_no_content_length_and_errors_are_json_arrays(standin: Standin) -> None:
    status, headers, body = standin.call("PUT", "vm.create", standin.vm_config())
    assert status == 204 and body == b""
    assert "content-length" not in headers and "content-type" not in headers
    assert headers["server"] == "Cloud Hypervisor API" and headers["connection"] == "keep-alive"
    status, headers, body = standin.call("PUT", "vm.create", standin.vm_config())
    assert status == 500 and headers["content-type"] == "application/json"
    assert json.loads(body) == ["Error from API", "The VM could not be created", "VM is already created"]


def test_request_framing_errors(standin: Standin) -> None:
    assert standin.call("GET", "vm.nope")[:1] == (404,)
    assert json.loads(standin.call("GET", "vm.nope")[2]) == ["Not Found"]
    assert json.loads(standin.call("PUT", "vm.info")[2]) == ["Bad Request"]  # wrong method
    status, _, body = standin.call("PUT", "vm.boot", {})  # even {} on a body-less action
    assert (status, json.loads(body)) == (400, ["Bad Request"])
    status, _, body = http(standin.api, "PUT", "vm.add-disk", "{not json")
    assert status == 400 and json.loads(body)[0] == "Failed to deserialize JSON"
    status, _, body = http(standin.api, "PUT", "vm.add-disk")  # body required
    assert (status, json.loads(body)) == (400, ["Bad Request"])
    status, _, body = http(standin.api, "PUT", "vm.create", "x" * 51201)
    assert status == 400 and b"larger than the limit of 51200" in body


def test_keep_alive_and_expect_continue(standin: Standin) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(standin.api))
        for _ in range(3):
            sock.sendall(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 200 and json.loads(body)["pid"] == standin.proc.pid
        body = json.dumps(standin.vm_config()).encode()
        sock.sendall(
            b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert read_response(sock)[0] == 100
        sock.sendall(body)
        assert read_response(sock)[0] == 204


@pytest.mark.usefixtures("echo_guest")
@pytest.mark.parametrize(("version", "not_created"), [("v51.1", 500), ("v52.0", 500), ("v53.0", 404)])
def test_state_machine_and_version_codes(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, version: str, not_created: int
) -> None:
    monkeypatch.setenv("CH_STANDIN_VERSION", version)
    server = Standin(workspace)
    try:
        status, _, body = server.call("GET", "vm.info")
        assert (status, json.loads(body)[-1]) == (not_created, "VM is not created")
        assert server.call("PUT", "vm.boot")[0] == not_created
        assert server.call("PUT", "vm.delete")[0] == 204  # always, even with nothing to delete
        status, _, body = server.call("PUT", "vm.shutdown")
        assert (status, json.loads(body)[-1]) == (500, "VM is not running")
        assert server.call("PUT", "vm.create", server.vm_config())[0] == 204
        info = json.loads(server.call("GET", "vm.info")[2])
        assert info["state"] == "Created"
        assert ("device_tree" in info and info["device_tree"] is None) == (version != "v53.0")
        assert server.call("PUT", "vm.pause")[0] == 500  # not booted: 500, never the spec's 405
        assert server.call("PUT", "vm.boot")[0] == 204
        assert json.loads(server.call("GET", "vm.info")[2])["state"] == "Running"
        assert server.call("PUT", "vm.boot")[0] == 500
        assert server.call("PUT", "vm.shutdown")[0] == 204
        assert json.loads(server.call("GET", "vm.info")[2])["state"] == "Created"  # config survives
        assert server.vsock.exists()  # the vsock socket is never removed by the VMM
        server.vsock.unlink()
        assert server.call("PUT", "vm.boot")[0] == 204  # boots again from the kept config
        status, headers, body = server.call("PUT", "vmm.shutdown")
        assert (status, headers["content-length"], body) == (200, "0", b"")
        assert server.proc.wait(10) == 0
        assert not server.api.exists() and server.vsock.exists()
    finally:
        server.stop()


def test_cold_add_then_hot_plug(standin: Standin) -> None:
    disk = standin.ws.disk("a.img")
    standin.call("PUT", "vm.create", standin.vm_config())
    status, _, body = standin.call("PUT", "vm.add-disk", {"path": str(disk)})
    assert (status, body) == (204, b"")
    standin.call("PUT", "vm.boot")
    status, _, body = standin.call("PUT", "vm.add-disk", {"path": str(disk), "readonly": True})
    added = json.loads(body)
    assert status == 200 and added["id"].startswith("_disk") and added["bdf"].startswith("0000:00:")


def _vsock_exchange(path: Path, command: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(command)
        received = b""
        while b"\n" not in received:
            try:
                chunk = sock.recv(64)
            except ConnectionResetError:  # closed with our unread bytes still queued
                break
            if not chunk:
                break
            received += chunk
        return received


def test_hybrid_vsock_handshake(standin: Standin) -> None:
    standin.call("PUT", "vm.create", standin.vm_config())
    assert not standin.vsock.exists()
    standin.call("PUT", "vm.boot")
    first = _vsock_exchange(standin.vsock, b"CONNECT 1024\n")
    second = _vsock_exchange(standin.vsock, b"connect  1024 \n")  # case and spaces are tolerated
    ports = [int(line.split()[1]) for line in (first, second)]
    assert all(port >= 2**30 for port in ports) and ports[1] == ports[0] + 1
    assert _vsock_exchange(standin.vsock, b"CONNECT 1025\n") == b""  # nothing listens: closed
    assert _vsock_exchange(standin.vsock, b"CONNECT " + b"0" * 30 + b"1024\n") == b""  # > 32 bytes
    assert _vsock_exchange(standin.vsock, b"HELLO 1024\n") == b""


def test_too_many_connections(standin: Standin) -> None:
    held = []
    try:
        for _ in range(10):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(standin.api))
            held.append(sock)
        time.sleep(0.2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            extra.settimeout(10)
            extra.connect(str(standin.api))
            assert read_response(extra)[0] == 503
    finally:
        for sock in held:
            sock.close()


def test_sigterm_removes_the_api_socket(standin: Standin) -> None:
    standin.proc.terminate()
    assert standin.proc.wait(10) == 0
    assert not standin.api.exists()
    assert os.path.exists(f"{standin.api}.lock")  # v53's lock file is left for the caller


def test_client_calls_and_error_mapping(standin: Standin) -> None:
    """Every client call against the stand-in, including the ones the driver only uses rarely."""
    assert error_messages(b'["Error from API","VM is not created"]') == [
        "Error from API",
        "VM is not created",
    ]
    assert error_messages(b"VM is not created") == ["VM is not created"]  # v46 and older: plain text
    assert error_messages(b"") == []

    with CloudHypervisorClient(standin.api) as client:
        assert client.ping().pid == standin.proc.pid
        with pytest.raises(ApiError) as not_created:
            client.info()
        assert not_created.value.status == 404 and not_created.value.messages[-1] == "VM is not created"
        client.create(
            VmConfig(
                payload=PayloadConfig(kernel=str(standin.ws.kernel)),
                vsock=VsockConfig(cid=3, socket=str(standin.vsock)),
                console=ConsoleConfig(mode="Off"),
            )
        )
        assert client.add_disk(DiskConfig(path=str(standin.ws.disk("cold.img")))) is None  # cold-add: 204
        client.boot()
        hot = client.add_disk(DiskConfig(path=str(standin.ws.disk("hot.img")), id="hot"))
        assert hot is not None and hot.id == "hot"
        assert set(client.counters()) >= {"hot"}
        client.shutdown()
        assert client.info().state == "Created"
        client.delete()
        client.delete()  # always 204
        client.shutdown_vmm()  # 200 with an empty body
    assert standin.proc.wait(10) == 0
