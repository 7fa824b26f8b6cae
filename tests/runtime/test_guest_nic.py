"""The request that configures a NIC hot-plugged at a claim: its checks, the guest's steps, and
the host-side request built from the node's attachment.

The steps run against a fake sysfs and a recorder instead of ``busybox ip``: a real guest runs
them in tests/qemu/test_nic_hotplug.py and tests/network/test_qemu_claim.py.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.agent import Agent
from vmsandbox.guest.nic import NicError, configure, find_interface
from vmsandbox.guest.protocol import REQUEST, ConfigureNetwork, ProtocolError
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.runtime.members import NIC_WAIT, configure_request

MAC = "02:76:73:fa:07:09"
GOOD = {"mac": MAC, "ip": "10.250.7.9", "prefix_length": 24, "gateway": "10.250.7.1"}


def test_the_request_round_trips_and_fills_its_defaults() -> None:
    message = ConfigureNetwork(**GOOD, dns=["10.99.0.53", "fd00::53"])
    parsed = REQUEST.parse(message.to_wire())
    assert parsed == message
    assert (parsed.ip6, parsed.gateway6, parsed.prefix_length6, parsed.timeout) == (None, None, 64, 30.0)


def test_addresses_are_normalised() -> None:
    message = ConfigureNetwork(**GOOD, ip6="FD76:7362:0AFA:0700::9", gateway6="fd76:7362:afa:700:0::1")
    assert (message.ip6, message.gateway6) == ("fd76:7362:afa:700::9", "fd76:7362:afa:700::1")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"mac": "02:76:73:FA:07:09"}, "ConfigureNetwork.mac: expected a MAC"),
        ({"mac": "02:76:73:fa:07"}, "ConfigureNetwork.mac: expected a MAC"),
        ({"mac": "03:76:73:fa:07:09"}, "ConfigureNetwork.mac: expected a unicast MAC"),
        ({"ip": "10.250.7.300"}, "ConfigureNetwork.ip: expected an IPv4 address"),
        ({"ip": "fd00::9"}, "ConfigureNetwork.ip: expected an IPv4 address"),
        ({"gateway": "10.250.7"}, "ConfigureNetwork.gateway: expected an IPv4 address"),
        ({"gateway": "10.250.7.9"}, "ConfigureNetwork.gateway: must differ from ip"),
        ({"prefix_length": 0}, "ConfigureNetwork.prefix_length: expected an integer from 1 to 30"),
        ({"prefix_length": 31}, "ConfigureNetwork.prefix_length: expected an integer from 1 to 30"),
        ({"prefix_length": True}, "ConfigureNetwork.prefix_length"),
        ({"ip6": "10.0.0.1", "gateway6": "fd00::1"}, "ConfigureNetwork.ip6: expected an IPv6 address"),
        ({"ip6": "fd00::9"}, "ConfigureNetwork.gateway6: required with ip6"),
        ({"gateway6": "fd00::1"}, "ConfigureNetwork.ip6: required with gateway6"),
        ({"ip6": "fd00::9", "gateway6": "fd00::1", "prefix_length6": 128}, "prefix_length6"),
        ({"dns": ["10.0.0.53", "resolver"]}, r"ConfigureNetwork.dns\[1\]: expected an IP address"),
        ({"dns": "10.0.0.53"}, "ConfigureNetwork.dns: expected a list"),
        ({"timeout": 0}, r"ConfigureNetwork.timeout: expected seconds in \(0, 120\]"),
        ({"timeout": 600}, "ConfigureNetwork.timeout"),
        ({"ip": None}, "ConfigureNetwork.ip: expected an IPv4 address"),
        ({"route": "x"}, "ConfigureNetwork: unknown field 'route'"),
    ],
)
def test_each_bad_value_is_refused_naming_its_field(change: dict[str, object], words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        ConfigureNetwork(**{**GOOD, **change})
    wire = {"op": "configure_network", **GOOD, **change}
    with pytest.raises(ProtocolError, match=words):  # a decoded frame is checked the same way
        REQUEST.parse(wire)


def _sysfs(root: Path, links: dict[str, str]) -> Path:
    for name, mac in links.items():
        (root / "net" / name).mkdir(parents=True)
        (root / "net" / name / "address").write_text(mac + "\n")
    (root / "net").mkdir(exist_ok=True)
    return root / "net"


def _proc(root: Path, name: str) -> Path:
    conf = root / "ipv6" / name
    conf.mkdir(parents=True)
    for setting in ("disable_ipv6", "accept_ra", "autoconf", "accept_dad", "dad_transmits"):
        (conf / setting).write_text("x\n")
    return root / "ipv6"


def test_the_guest_configures_the_interface_with_the_mac_as_init_does(tmp_path: Path) -> None:
    sys_net = _sysfs(tmp_path, {"lo": "00:00:00:00:00:00", "eth0": MAC})
    proc = _proc(tmp_path, "eth0")
    calls: list[list[str]] = []
    request = ConfigureNetwork(
        **GOOD, ip6="fd76:7362:afa:700::9", gateway6="fd76:7362:afa:700::1", dns=["10.99.0.53"]
    )
    resolv = tmp_path / "resolv.conf"
    name = configure(
        request, run=calls.append, sys_net=str(sys_net), proc_ipv6=str(proc), resolv_conf=str(resolv)
    )
    assert name == "eth0"
    assert [c[2:] for c in calls] == [
        ["addr", "add", "10.250.7.9/24", "dev", "eth0"],
        ["-6", "addr", "add", "fd76:7362:afa:700::9/64", "dev", "eth0"],
        ["link", "set", "eth0", "up"],
        ["route", "replace", "default", "via", "10.250.7.1", "dev", "eth0"],
        ["-6", "route", "replace", "default", "via", "fd76:7362:afa:700::1", "dev", "eth0"],
    ]
    assert all(c[:2] == ["busybox", "ip"] for c in calls)
    settings = {
        s: (proc / "eth0" / s).read_text() for s in ("accept_ra", "autoconf", "accept_dad", "dad_transmits")
    }
    assert set(settings.values()) == {"0"}, "no router advertisements, autoconfiguration or DAD"
    assert (proc / "eth0" / "disable_ipv6").read_text() == "x\n", "IPv6 stays on when the node gives it"
    assert resolv.read_text() == "nameserver 10.99.0.53\n"


def test_without_ipv6_the_interface_has_none_and_no_resolvers_leave_the_file(tmp_path: Path) -> None:
    sys_net = _sysfs(tmp_path, {"eth0": MAC})
    proc = _proc(tmp_path, "eth0")
    resolv = tmp_path / "resolv.conf"
    calls: list[list[str]] = []
    configure(
        ConfigureNetwork(**GOOD),
        run=calls.append,
        sys_net=str(sys_net),
        proc_ipv6=str(proc),
        resolv_conf=str(resolv),
    )
    assert (proc / "eth0" / "disable_ipv6").read_text() == "1"
    assert not any("-6" in c for c in calls)
    assert not resolv.exists()


def test_the_interface_is_waited_for_and_the_wait_is_bounded(tmp_path: Path) -> None:
    sys_net = _sysfs(tmp_path, {"lo": "00:00:00:00:00:00"})

    def appear() -> None:
        time.sleep(0.2)
        (sys_net / "eth1").mkdir()
        (sys_net / "eth1" / "address").write_text(MAC.upper() + "\n")

    threading.Thread(target=appear).start()
    assert find_interface(MAC, 5.0, str(sys_net)) == "eth1"
    started = time.monotonic()
    with pytest.raises(NicError, match=r"no interface with MAC 02:76:73:fa:07:aa appeared within 0\.3s"):
        find_interface("02:76:73:fa:07:aa", 0.3, str(sys_net))
    assert time.monotonic() - started < 2


def test_a_gateway_off_the_subnet_is_refused_before_anything_runs(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    request = ConfigureNetwork(**{**GOOD, "gateway": "10.250.8.1"})
    with pytest.raises(
        NicError, match=r"ConfigureNetwork.gateway: 10.250.8.1 is not on ip's subnet 10.250.7.0/24"
    ):
        configure(request, run=calls.append, sys_net=str(_sysfs(tmp_path, {"eth0": MAC})))
    assert calls == []


def test_an_agent_on_the_host_refuses_to_configure_its_network(tmp_path: Path) -> None:
    """The process backend's agent and the stand-in's run on a host: its interfaces are not theirs."""
    cwd = os.getcwd()
    try:
        agent = Agent(tmp_path / "state", "runc")  # no --init-uptime: not a VM's agent
        with pytest.raises(VMSandboxError, match="does not own a VM's network"):
            agent.handle(ConfigureNetwork(**GOOD))
    finally:
        os.chdir(cwd)


def test_the_host_builds_the_request_from_the_nodes_attachment() -> None:
    network = NetworkAttachment(
        ip="10.250.7.9",
        gateway="10.250.7.1",
        mac=MAC,
        dns=["10.99.0.53"],
        ip6="fd76:7362:afa:700::9",
        gateway6="fd76:7362:afa:700::1",
        tap="tsbaaaaaaaaaaaa",
    )
    request = configure_request(network)
    assert request == ConfigureNetwork(
        **GOOD,
        ip6="fd76:7362:afa:700::9",
        gateway6="fd76:7362:afa:700::1",
        dns=["10.99.0.53"],
        timeout=NIC_WAIT,
    )
    with pytest.raises(ProtocolError, match=r"ConfigureNetwork\.mac"):
        configure_request(network.model_copy(update={"mac": None}))
