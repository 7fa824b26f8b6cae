"""The agent's network options: checked at start-up, each bad one named."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.node_agent.capacity import node_capacity
from vmsandbox.node_agent.config import ConfigError, load_config
from vmsandbox.node_agent.network.startup import (
    derived_prefix6,
    ipv6_enabled,
    node_resolvers,
    sandbox_prefix6,
)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"VMSANDBOX_AGENT_SANDBOX_CIDR": "10.250.0.1/24"}, "sandboxCIDR"),
        ({"VMSANDBOX_AGENT_SANDBOX_CIDR": "10.0.0.0/8"}, "prefix length must be between 16 and 29"),
        ({"VMSANDBOX_AGENT_SANDBOX_DNS": "10.0.0.53,resolver"}, "sandboxDNS"),
        ({"VMSANDBOX_AGENT_SANDBOX_BRIDGE": "Bridge-With-A-Long-Name"}, "sandboxBridge"),
        ({"VMSANDBOX_AGENT_NETWORK_NAMESPACE": "run/netns/node"}, "networkNamespace"),
        ({"VMSANDBOX_AGENT_SANDBOX_CIDR6": "fd00::1/64"}, "sandboxCIDR6"),
        ({"VMSANDBOX_AGENT_SANDBOX_CIDR6": "2001:db8::/64"}, "must be a unique local (fc00::/7) prefix"),
        ({"VMSANDBOX_AGENT_SANDBOX_CIDR6": "fd00::/120"}, "prefix length must be between 48 and 112"),
        ({"VMSANDBOX_AGENT_SANDBOX_CIDR6": "off"}, "sandboxCIDR6"),
    ],
)
def test_bad_network_option_is_named(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={"NODE_NAME": "n1", **env})
    assert words in str(err.value)


def test_network_options_parse() -> None:
    config = load_config(
        environ={
            "NODE_NAME": "n1",
            "VMSANDBOX_AGENT_SANDBOX_CIDR": "10.250.3.0/24",
            "VMSANDBOX_AGENT_SANDBOX_DNS": "10.0.0.53, 9.9.9.9",
        }
    )
    assert str(config.sandbox_cidr) == "10.250.3.0/24"
    assert config.sandbox_dns == ["10.0.0.53", "9.9.9.9"]
    assert load_config(environ={"NODE_NAME": "n1"}).sandbox_cidr is None, "no network unless configured"


def test_node_resolvers_skip_loopback_and_ipv6(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fd00::1\nsearch example\n")
    assert node_resolvers(conf) == ["10.0.0.2"]
    assert node_resolvers(tmp_path / "missing") == []


def test_ipv6_is_off_where_the_kernel_has_none_or_turned_it_off(tmp_path: Path) -> None:
    assert not ipv6_enabled(tmp_path / "missing"), "ipv6.disable=1: no /proc/sys/net/ipv6"
    conf = tmp_path / "conf" / "all"
    conf.mkdir(parents=True)
    (conf / "disable_ipv6").write_text("1\n")
    assert not ipv6_enabled(tmp_path)
    (conf / "disable_ipv6").write_text("0\n")
    assert ipv6_enabled(tmp_path)


def test_ipv6_prefix_is_derived_configured_or_off() -> None:
    derived = load_config(environ={"NODE_NAME": "n1", "VMSANDBOX_AGENT_SANDBOX_CIDR": "10.250.3.0/24"})
    assert str(sandbox_prefix6(derived)) == "fd76:7362:afa:300::/64"
    assert str(derived_prefix6(IPv4Network("192.168.255.0/24"))) == "fd76:7362:c0a8:ff00::/64"
    set6 = {
        "VMSANDBOX_AGENT_SANDBOX_CIDR": "10.250.3.0/24",
        "VMSANDBOX_AGENT_SANDBOX_CIDR6": "fd12:3456::/64",
    }
    configured = load_config(environ={"NODE_NAME": "n1", **set6})
    assert str(sandbox_prefix6(configured)) == "fd12:3456::/64"
    capacity = node_capacity(configured, HypervisorConfig())
    assert capacity.sandbox_cidr6 == "fd12:3456::/64", "published on the Node beside sandboxCIDR"
    off = load_config(environ={"NODE_NAME": "n1", **set6, "VMSANDBOX_AGENT_SANDBOX_CIDR6": "none"})
    assert sandbox_prefix6(off) is None and node_capacity(off, HypervisorConfig()).sandbox_cidr6 is None
    no_network = load_config(environ={"NODE_NAME": "n1", "VMSANDBOX_AGENT_SANDBOX_CIDR6": "fd12:3456::/64"})
    assert sandbox_prefix6(no_network) is None, "no IPv6 without the IPv4 subnet"
