"""Contract tests against Cloud Hypervisor's own OpenAPI document.

Every request body the driver sent during real driver runs (captured on the wire by the
stand-in) must validate against the ``components.schemas`` entry the spec names for that path,
and body-less actions must carry no body at all. The spec file is not part of the project:
``VMSANDBOX_CH_OPENAPI`` or ``<repo>/../shared/specs/cloud-hypervisor/cloud-hypervisor.yaml``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cloud_hypervisor.conftest import Workspace, http, openapi_spec
from tests.cloud_hypervisor.standin import openapi
from vmsandbox.hypervisor.base import DiskSpec, VMHandle
from vmsandbox.hypervisor.cloud_hypervisor import CloudHypervisorDriver


@pytest.fixture(autouse=True, scope="module")
def spec() -> dict[str, Any]:
    return openapi.load_spec(openapi_spec())


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return False


def _drive_everything(ws: Workspace, driver: CloudHypervisorDriver) -> None:
    """One VM through every call the driver makes."""
    handle = driver.boot(
        ws.spec(
            vcpus=2,
            memory_mib=384,
            kernel_args=["x=1"],
            disks=[DiskSpec(path=ws.disk("s.img"), serial="ctr-s")],
        )
    )
    try:
        driver.attach_disk(handle, DiskSpec(path=ws.disk("p.img"), serial="ctr-p", readonly=False))
        driver.detach_disk(handle, "ctr-p")
        driver.detach_disk(handle, "ctr-p")  # idempotent: the second one sends nothing
        assert all(d.get("id") != "ctr-p" for d in driver.info(handle).config.get("disks") or [])
        driver.pause(handle)
        driver.resume(handle)
        driver.counters(handle)
        driver.info(handle)
        driver.snapshot(handle, ws.root / "snap")
    finally:
        driver.stop(handle)
    restored = driver.restore(ws.spec(vm_id="vm2"), ws.root / "snap")
    driver.stop(restored)


@pytest.mark.usefixtures("echo_guest")
def test_every_body_the_driver_sends_conforms(
    spec: dict[str, Any], workspace: Workspace, driver: CloudHypervisorDriver, standin_version: str
) -> None:
    _drive_everything(workspace, driver)
    requests = workspace.requests()
    sent_paths = {r["path"].removeprefix("/api/v1") for r in requests}
    assert {
        "/vm.create",
        "/vm.add-disk",
        "/vm.boot",
        "/vmm.shutdown",
        "/vm.pause",
        "/vm.resume",
        "/vm.remove-device",
        "/vm.snapshot",
        "/vm.restore",
    } <= sent_paths
    assert sum(r["path"].endswith("/vm.remove-device") for r in requests) == 1

    validated = []
    for request in requests:
        path = request["path"].removeprefix("/api/v1")
        assert path in spec["paths"], f"{path} is not an endpoint of the spec"
        assert request["method"].lower() in spec["paths"][path], f"{request['method']} {path} not in the spec"
        schema = openapi.body_schema_name(spec, path, request["method"])
        if schema is None:
            assert request["body"] is None, f"{path} takes no body but got {request['body']!r}"
            continue
        assert request["body"] is not None, f"{path} requires a {schema} body"
        body = json.loads(request["body"])
        assert not _has_null(body), f"{path} body contains null: {body}"
        assert openapi.violations(spec, schema, body) == [], f"{path} body breaks {schema}"
        validated.append((path, schema))
    assert ("/vm.create", "VmConfig") in validated
    assert ("/vm.add-disk", "DiskConfig") in validated
    assert ("/vm.remove-device", "VmRemoveDevice") in validated
    assert ("/vm.snapshot", "VmSnapshotConfig") in validated
    assert ("/vm.restore", "RestoreConfig") in validated
    restore = json.loads(next(r["body"] for r in requests if r["path"].endswith("/vm.restore")))
    if standin_version == "v51.1":  # no on-demand restore, no resume flag: vm.resume follows
        assert restore == {"source_url": restore["source_url"], "prefault": False}
    else:
        assert restore["memory_restore_mode"] == "OnDemand" and restore["resume"] is True
        assert "prefault" not in restore


def test_validator_rejects_what_the_real_server_would(spec: dict[str, Any]) -> None:
    """The check is not vacuous: nulls, missing required fields and bad values are caught."""
    good = {"payload": {"kernel": "/k"}, "vsock": {"cid": 3, "socket": "/s"}, "console": {"mode": "Off"}}
    assert openapi.violations(spec, "VmConfig", good) == []
    assert openapi.violations(spec, "VmConfig", {**good, "payload": {"kernel": None}})
    assert openapi.violations(spec, "VmConfig", {"cpus": {"boot_vcpus": 1}})
    assert openapi.violations(spec, "VmConfig", {**good, "vsock": {"cid": 2, "socket": "/s"}})
    assert openapi.violations(spec, "VmConfig", {**good, "console": {"mode": "Serial"}})
    assert openapi.violations(spec, "DiskConfig", {"path": "/d", "readonly": "yes"})


def test_standin_fails_loudly_on_a_nonconforming_body(
    workspace: Workspace, driver: CloudHypervisorDriver, echo_vm: VMHandle
) -> None:
    handle = echo_vm
    status, _headers, body = http(
        workspace.state_dir / "ch-api.sock",
        "PUT",
        "vm.add-disk",
        json.dumps({"path": "/d", "num_queues": "two"}),
    )
    assert status == 500
    words = json.loads(body)
    assert words[0] == "stand-in: request body does not conform to components.schemas.DiskConfig"
    assert any("num_queues" in w for w in words[1:])
    log = (workspace.state_dir / "cloud-hypervisor.log").read_text()
    assert "LOUD: PUT /vm.add-disk body does not conform to components.schemas.DiskConfig" in log
    assert all(disk["path"] != "/d" for disk in driver.info(handle).config["disks"])


@pytest.mark.usefixtures("echo_guest")
def test_standin_responses_match_the_release_they_emulate(
    spec: dict[str, Any], workspace: Workspace, driver: CloudHypervisorDriver, standin_version: str
) -> None:
    """v53 omits unset fields, so its answers validate; v52 and older emit nulls, which the spec
    (no ``nullable``) rejects and which the driver must still read."""
    handle = driver.boot(workspace.spec())
    try:
        api = workspace.state_dir / "ch-api.sock"
        ping = json.loads(http(api, "GET", "vmm.ping")[2])
        assert openapi.violations(spec, "VmmPingResponse", ping) == []
        status, _, body = http(api, "PUT", "vm.add-disk", json.dumps({"path": str(workspace.disk("h.img"))}))
        assert status == 200 and openapi.violations(spec, "PciDeviceInfo", json.loads(body)) == []
        info = json.loads(http(api, "GET", "vm.info")[2])
        problems = openapi.violations(spec, "VmInfo", info)
        if standin_version == "v53.0":
            assert problems == []
        else:
            assert problems and all("None is not of type" in p for p in problems)
        assert driver.info(handle).state == "Running"  # the driver reads both
    finally:
        driver.stop(handle)
