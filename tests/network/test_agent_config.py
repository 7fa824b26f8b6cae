"""The agent's network options: checked at start-up, each bad one named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsandbox.node_agent.config import ConfigError, load_config
from vmsandbox.node_agent.network.startup import node_resolvers


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"VMSANDBOX_AGENT_SANDBOX_CIDR": "10.250.0.1/24"}, "sandboxCIDR"),
        ({"VMSANDBOX_AGENT_SANDBOX_CIDR": "10.0.0.0/8"}, "prefix length must be between 16 and 29"),
        ({"VMSANDBOX_AGENT_SANDBOX_DNS": "10.0.0.53,resolver"}, "sandboxDNS"),
        ({"VMSANDBOX_AGENT_SANDBOX_BRIDGE": "Bridge-With-A-Long-Name"}, "sandboxBridge"),
        ({"VMSANDBOX_AGENT_NETWORK_NAMESPACE": "run/netns/node"}, "networkNamespace"),
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
