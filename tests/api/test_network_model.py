"""The network part of the model: CIDRs parsed strictly, the mode resolved in one place."""

from __future__ import annotations

import pytest

from tests.api.cases import sandbox
from vmsandbox.api import (
    InvalidSandbox,
    NetworkMode,
    NetworkStatus,
    SandboxNetwork,
    effective_mode,
    parse_sandbox,
)
from vmsandbox.operator.config import OperatorConfig


def _network(**network: object) -> SandboxNetwork:
    parsed = parse_sandbox(sandbox(network=network)).spec.network
    assert parsed is not None
    return parsed


def test_cidrs_are_canonical_and_both_families_accepted() -> None:
    net = _network(mode="restricted", egress={"allow": ["10.99.0.2/32", "FD00::/8"], "deny": ["198.18.0.2"]})
    assert net.egress is not None
    assert net.egress.allow == ["10.99.0.2/32", "fd00::/8"]
    assert net.egress.deny == ["198.18.0.2/32"], "a bare address is a /32"


@pytest.mark.parametrize(
    ("network", "field", "words"),
    [
        ({"egress": {"allow": ["10.0.0.1/8"]}}, "spec.network.egress.allow[0]", "host bits"),
        ({"egress": {"deny": ["10.0.0.0/33"]}}, "spec.network.egress.deny[0]", "not an IPv4 or IPv6 CIDR"),
        ({"egress": {"allow": ["fe80::1/200"]}}, "spec.network.egress.allow[0]", "not an IPv4 or IPv6 CIDR"),
        ({"mode": "none", "egress": {"allow": ["1.2.3.0/24"]}}, "spec.network", "mode is none"),
    ],
)
def test_bad_network_names_the_field(network: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidSandbox) as err:
        parse_sandbox(sandbox(network=network))
    assert err.value.field == field
    assert words in str(err.value)


def test_mode_is_the_spec_then_the_placement_then_restricted() -> None:
    assert effective_mode(None, None) is NetworkMode.RESTRICTED
    assert effective_mode(SandboxNetwork(), NetworkStatus(mode=NetworkMode.OPEN)) is NetworkMode.OPEN
    assert effective_mode(SandboxNetwork(mode=NetworkMode.NONE), NetworkStatus(mode=NetworkMode.OPEN)) is (
        NetworkMode.NONE
    )


def test_cluster_default_mode_is_configurable() -> None:
    assert OperatorConfig.load(environ={}).default_network_mode is NetworkMode.RESTRICTED
    env = {"VMSANDBOX_OPERATOR_DEFAULT_NETWORK_MODE": "open"}
    assert OperatorConfig.load(environ=env).default_network_mode is NetworkMode.OPEN
