"""Operator settings: file, environment, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsandbox.api import Hypervisor
from vmsandbox.operator.config import ConfigError, OperatorConfig, Strategy


def test_defaults_are_the_documented_ones() -> None:
    config = OperatorConfig()
    assert config.strategy is Strategy.SPREAD
    assert config.agent_alive_seconds == 40 and config.node_lost_grace_seconds == 60
    assert Hypervisor.PROCESS not in config.allowed_hypervisors
    assert config.lease_duration_seconds <= 30 and not config.webhook


def test_file_with_camel_case_keys_then_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text("strategy: binpack\nnodeLostGraceSeconds: 90\nallowedHypervisors: [qemu, process]\n")
    config = OperatorConfig.load(path, environ={"VMSANDBOX_OPERATOR_NODE_LOST_GRACE_SECONDS": "120"})
    assert config.strategy is Strategy.BINPACK
    assert config.node_lost_grace_seconds == 120
    assert config.allowed_hypervisors == [Hypervisor.QEMU, Hypervisor.PROCESS]


def test_env_list_as_commas() -> None:
    config = OperatorConfig.load(environ={"VMSANDBOX_OPERATOR_ALLOWED_HYPERVISORS": "process,qemu"})
    assert config.allowed_hypervisors == [Hypervisor.PROCESS, Hypervisor.QEMU]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"VMSANDBOX_OPERATOR_STRATEGY": "random"}, "strategy"),
        ({"VMSANDBOX_OPERATOR_ALLOWED_HYPERVISORS": "firecracker"}, "allowedHypervisors.0"),
        ({"VMSANDBOX_OPERATOR_RENEW_DEADLINE_SECONDS": "20"}, "renewDeadlineSeconds"),
        ({"VMSANDBOX_OPERATOR_WORKERS": "0"}, "workers"),
        ({"VMSANDBOX_OPERATOR_SUBRESOURCES": "true"}, "subresourcesCertfile"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        OperatorConfig.load(environ=env)
    assert needle in str(info.value) and str(info.value).startswith("operator config:")


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text("stratgy: spread\n")
    with pytest.raises(ConfigError, match="stratgy"):
        OperatorConfig.load(path, environ={})
