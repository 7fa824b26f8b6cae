"""The sandbox's NIC in ``vm.create``: a ``net`` entry on the node's tap, checked against the
OpenAPI document, and the guest's address on the kernel command line."""

from __future__ import annotations

import json

from tests.cloud_hypervisor.conftest import Workspace, openapi_spec
from tests.cloud_hypervisor.standin import openapi
from vmsandbox.hypervisor.cloud_hypervisor import CloudHypervisorDriver
from vmsandbox.hypervisor.network import NetworkAttachment

NIC = NetworkAttachment(
    ip="10.250.7.2",
    prefix_length=24,
    gateway="10.250.7.1",
    mac="02:76:73:fa:07:02",
    dns=["10.99.0.53"],
    tap="tsb0123456789ab",
)


def test_vm_create_carries_the_tap_and_mac(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    handle = driver.boot(workspace.spec(network=NIC, kernel_args=[NIC.kernel_arg()]))
    try:
        create = [r for r in workspace.requests() if r["path"] == "/api/v1/vm.create"]
        config = json.loads(create[0]["body"])
        assert config["net"] == [{"tap": "tsb0123456789ab", "mac": "02:76:73:fa:07:02", "id": "net0"}]
        assert "ip" not in config["net"][0] and "mask" not in config["net"][0], "no address on the host's tap"
        assert config["payload"]["cmdline"].endswith(" vmsandbox.net=10.250.7.2/24,10.250.7.1,10.99.0.53")
        assert openapi.violations(openapi.load_spec(openapi_spec()), "VmConfig", config) == []
    finally:
        driver.stop(handle)


def test_no_network_means_no_net_device(workspace: Workspace, driver: CloudHypervisorDriver) -> None:
    handle = driver.boot(workspace.spec(network=NetworkAttachment()))
    try:
        create = [r for r in workspace.requests() if r["path"] == "/api/v1/vm.create"]
        assert "net" not in json.loads(create[0]["body"])
    finally:
        driver.stop(handle)
