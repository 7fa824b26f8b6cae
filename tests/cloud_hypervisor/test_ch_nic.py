"""A sandbox NIC hot-plugged into a running Cloud Hypervisor VM (the stand-in): ``vm.add-net``
with the tap's descriptor as SCM_RIGHTS and a body held to the OpenAPI document, and the
stand-in's state rules for it (the real server's: not created, duplicate ids, no tap at all).

The taps live in a network namespace the test made; nothing is configured outside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cloud_hypervisor.conftest import Workspace, openapi_spec
from tests.cloud_hypervisor.standin import openapi
from tests.cloud_hypervisor.test_ch_standin_wire import Standin, standin
from tests.network.conftest import own_tap, sh, tap_is_free
from vmsandbox.hypervisor.cloud_hypervisor.driver import NIC_ID, CloudHypervisorDriver
from vmsandbox.hypervisor.cloud_hypervisor.errors import ApiError
from vmsandbox.hypervisor.cloud_hypervisor.rawhttp import put_with_fds
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.hypervisor.taps import open_tap

__all__ = ["standin"]  # the fixture, used by name

MAC = "02:76:73:fb:00:02"


@pytest.fixture
def tap_netns() -> Iterator[tuple[str, str]]:
    with own_tap("10.251.0.1/24") as made:
        yield made


def _attachment(netns: str, tap: str) -> NetworkAttachment:
    return NetworkAttachment(
        ip="10.251.0.2", gateway="10.251.0.1", mac=MAC, tap=tap, tap_netns=Path(f"/run/netns/{netns}")
    )


def _nets(driver: CloudHypervisorDriver, handle: Any) -> list[dict[str, Any]]:
    return list(driver.info(handle).config.get("net") or [])


@pytest.mark.usefixtures("echo_guest", "standin_version")
def test_a_nic_is_hot_plugged_on_the_taps_descriptor_and_unplugged_again(
    workspace: Workspace, driver: CloudHypervisorDriver, tap_netns: tuple[str, str]
) -> None:
    netns, tap = tap_netns
    handle = driver.boot(workspace.spec())
    try:
        driver.attach_nic(handle, _attachment(netns, tap))
        assert [(n["id"], n["mac"]) for n in _nets(driver, handle)] == [(NIC_ID, MAC)]
        assert NIC_ID in (driver.info(handle).device_tree or {}), "it was hot-plugged, not cold-added"
        assert not tap_is_free(netns, tap), "the VMM holds the tap it was handed"

        # A second NIC under the same id: refused, and the descriptor it came with is closed.
        other = f"{tap}b"
        sh("ip", "-n", netns, "tuntap", "add", "dev", other, "mode", "tap")
        with pytest.raises(ApiError, match="not unique"):
            driver.attach_nic(handle, _attachment(netns, other))
        assert tap_is_free(netns, other)

        driver.detach_nic(handle)
        assert _nets(driver, handle) == []
        assert tap_is_free(netns, tap), "the tap was released with the NIC"
        driver.detach_nic(handle)  # idempotent: nothing is sent the second time
    finally:
        driver.stop(handle)
    adds = [r for r in workspace.requests() if r["path"].endswith("/vm.add-net")]
    assert [json.loads(r["body"]) for r in adds] == [{"mac": MAC, "id": NIC_ID}] * 2, (
        "no tap name: a descriptor"
    )
    removes = [r for r in workspace.requests() if r["path"].endswith("/vm.remove-device")]
    assert len(removes) == 1


def test_the_add_net_body_conforms_to_the_openapi_document() -> None:
    from vmsandbox.hypervisor.cloud_hypervisor.vmconfig import NetConfig

    spec = openapi.load_spec(openapi_spec())
    assert openapi.body_schema_name(spec, "/vm.add-net", "PUT") == "NetConfig"
    assert openapi.violations(spec, "NetConfig", NetConfig(mac=MAC, id=NIC_ID).body()) == []
    assert openapi.violations(spec, "NetConfig", {"mac": MAC, "num_queues": "two"})


def _add_net(server: Standin, body: dict[str, Any], fds: list[int]) -> tuple[int, Any]:
    status, content = put_with_fds(server.api, "/api/v1/vm.add-net", body, fds, 10.0)
    return status, json.loads(content) if content else None


@pytest.mark.usefixtures("standin_version")
def test_the_standin_keeps_the_real_servers_state_rules_for_add_net(
    standin: Standin, tap_netns: tuple[str, str]
) -> None:
    netns, tap = tap_netns
    fd = open_tap(_attachment(netns, tap))
    try:
        status, body = _add_net(standin, {"mac": MAC, "id": "n0"}, [fd])
        assert status in (404, 500) and "VM is not created" in body, "no VM config yet"

        standin.call("PUT", "vm.create", standin.vm_config())
        assert _add_net(standin, {"mac": MAC, "id": "n0"}, []) == (
            500,
            [
                "Error from API",
                "The network device could not be added to the VM",
                "Cannot create virtio-net device",
                "Open tap failed: no tap given",
            ],
        )
        read, write = os.pipe()
        try:
            status, body = _add_net(standin, {"mac": MAC, "id": "n0"}, [read])
        finally:
            os.close(read)
            os.close(write)
        assert status == 500 and "Invalid tap fd" in body

        assert _add_net(standin, {"mac": MAC, "id": "n0"}, [fd]) == (204, None), "cold-added before boot"
        assert standin.call("PUT", "vm.boot")[0] == 204
        status, body = _add_net(standin, {"mac": MAC, "id": "n0"}, [fd])
        assert status == 500 and "Identifier n0 is not unique" in body
        status, body = _add_net(standin, {"mac": "02:76:73:fb:00:03"}, [fd])
        assert status == 200 and body["id"].startswith("_net") and body["bdf"].startswith("0000:00:")
        status, _, _ = standin.call("PUT", "vm.remove-device", {"id": "n0"})
        assert status == 204
        info = json.loads(standin.call("GET", "vm.info")[2])
        assert [n["id"] for n in info["config"]["net"]] == [body["id"]]
    finally:
        os.close(fd)
