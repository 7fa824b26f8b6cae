"""A NIC hot-plugged into a running QEMU guest (TCG here) that booted without one, as a networked
claim of a pool member does: the tap lives in a network namespace the test made, QEMU runs in
the machine's own (as the VMM user) and gets the tap only as a descriptor. One boot.

Traffic stays between the guest and that namespace; nothing is configured outside it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.network.conftest import own_tap, sh, tap_is_free
from tests.qemu.test_driver import assert_torn_down, config, image_spec
from tests.tools import require_tools
from vmsandbox.guest.protocol import ConfigureNetwork, Ok
from vmsandbox.hypervisor.base import HypervisorError, VMHandle
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.hypervisor.qemu import QemuDriver
from vmsandbox.hypervisor.qemu.nic import NIC_ID
from vmsandbox.hypervisor.qemu.qmp import QMPClient, has_device
from vmsandbox.runtime.client import AgentClient
from vmsandbox.runtime.errors import AgentError

pytestmark = pytest.mark.vm

HOST_SIDE = "10.251.0.1"
GUEST = "10.251.0.2"
MAC = "02:76:73:fb:00:02"


@pytest.fixture
def tap_netns() -> Iterator[tuple[str, str]]:
    require_tools("busybox")
    with own_tap(f"{HOST_SIDE}/24") as made:
        yield made


def _attachment(netns: str, tap: str) -> NetworkAttachment:
    return NetworkAttachment(
        ip=GUEST, gateway=HOST_SIDE, mac=MAC, dns=[HOST_SIDE], tap=tap, tap_netns=Path(f"/run/netns/{netns}")
    )


def _has_nic(handle: VMHandle) -> bool:
    with QMPClient.connect(Path(handle.endpoints["qmp"])) as qmp:
        return has_device(qmp, NIC_ID)


def _ping(netns: str) -> bool:
    argv = ["ip", "netns", "exec", netns, "busybox", "ping", "-c", "1", "-W", "10", GUEST]
    return subprocess.run(argv, capture_output=True, check=False, timeout=60).returncode == 0


def test_a_nic_hot_plugged_and_configured_answers_then_unplugs_and_frees_its_tap(
    guest_image: Path, qemu_binary: str, state_root: Path, tap_netns: tuple[str, str]
) -> None:
    netns, tap = tap_netns
    network = _attachment(netns, tap)
    driver = QemuDriver(config(qemu_binary))
    spec = image_spec(guest_image, state_root / "vm1")
    handle = driver.boot(spec)  # no NIC: as a pool member boots
    try:
        assert not _has_nic(handle)
        agent = AgentClient(driver, handle)
        driver.attach_nic(handle, network)
        assert _has_nic(handle)
        assert not tap_is_free(netns, tap), "QEMU holds the tap"

        # Its tap again: a single-queue tap is busy, refused before QEMU is asked.
        with pytest.raises(HypervisorError, match="busy"):
            driver.attach_nic(handle, network)
        # A second NIC on another tap: QEMU refuses the duplicate netdev, the descriptor it was
        # handed is closed again (the tap is free), and the first NIC stays as it was.
        other = f"{tap}b"
        sh("ip", "-n", netns, "tuntap", "add", "dev", other, "mode", "tap")
        with pytest.raises(HypervisorError, match="net0"):
            driver.attach_nic(handle, _attachment(netns, other))
        assert tap_is_free(netns, other), "QEMU kept the descriptor of a NIC it refused"
        assert _has_nic(handle)

        # A MAC the guest never sees: the agent gives up within the request's bound, naming it.
        wrong = ConfigureNetwork(
            mac="02:76:73:fb:00:99", ip=GUEST, prefix_length=24, gateway=HOST_SIDE, timeout=1
        )
        with pytest.raises(AgentError, match="02:76:73:fb:00:99"):
            agent.call(wrong, Ok)

        request = ConfigureNetwork(mac=MAC, ip=GUEST, prefix_length=24, gateway=HOST_SIDE, dns=[HOST_SIDE])
        agent.call(request, Ok, timeout=90)
        assert _ping(netns), "the guest answers on its hot-plugged NIC"

        driver.detach_nic(handle)
        assert not _has_nic(handle)
        assert tap_is_free(netns, tap), "the tap was released with the NIC"
        assert not _ping(netns)
        driver.detach_nic(handle)  # idempotent
    finally:
        driver.stop(handle)
    assert_torn_down(spec.state_dir)
