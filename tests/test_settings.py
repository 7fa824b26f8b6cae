"""One settings loader for the operator, the node agent and the runtime: a file, then each
component's variables, one list syntax, every bad option named; and the timing both sides share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from vmsandbox.api.constants import AGENT_READY_LABEL
from vmsandbox.api.timing import AGENT_LEASE_RENEW_SECONDS, AGENT_LEASE_SECONDS, NODE_LOST_GRACE_SECONDS
from vmsandbox.config import ConfigError, load_settings
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.node_agent.config import AgentConfig, load_config
from vmsandbox.node_agent.fencing import Fence
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.nodes import NodeView
from vmsandbox.runtime.cli import main as runtime_cli

Load = Callable[[Path | None, Mapping[str, str]], BaseModel]


@dataclass(frozen=True)
class Component:
    load: Load
    prefix: str
    #: (option, file value, variable value, field, expected after the variable wins)
    override: tuple[str, Any, str, str, Any]
    #: (option, variable value, field, expected list)
    listed: tuple[str, str, str, list[Any]]
    #: Two bad options: (option in the file, its value), (option as a variable, its value)
    bad: tuple[tuple[str, Any], tuple[str, str]]
    env: Mapping[str, str]


COMPONENTS = {
    "operator": Component(
        load=OperatorConfig.load,
        prefix="VMSANDBOX_OPERATOR_",
        override=("workers", 8, "9", "workers", 9),
        listed=("allowedHypervisors", " qemu, process,", "allowed_hypervisors", ["qemu", "process"]),
        bad=(("strategy", "random"), ("sweepSeconds", "-1")),
        env={},
    ),
    "agent": Component(
        load=load_config,
        prefix="VMSANDBOX_AGENT_",
        override=("imageCacheLimitMiB", 512, "1024", "image_cache_limit_mib", 1024),
        listed=("insecureRegistries", "r1:5000, ,r2:80", "insecure_registries", ["r1:5000", "r2:80"]),
        bad=(("reserveVcpus", "many"), ("stateDir", "relative/dir")),
        env={"NODE_NAME": "n1"},
    ),
    "runtime": Component(
        load=HypervisorConfig.load,
        prefix="VMSANDBOX_",
        override=("qemuBinary", "/opt/qemu", "/usr/local/bin/qemu", "qemu_binary", "/usr/local/bin/qemu"),
        listed=("cloudHypervisorArgs", "-v,  --debug,", "cloud_hypervisor_args", ["-v", "--debug"]),
        bad=(("qemuAccel", "fast"), ("ociRuntime", "docker")),
        env={},
    ),
}


def _variable(component: Component, option: str) -> str:
    return component.prefix + "".join(f"_{c}" if c.isupper() else c.upper() for c in option).replace(
        "MI_B", "MIB"
    )


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


@pytest.fixture(params=sorted(COMPONENTS))
def component(request: pytest.FixtureRequest) -> Component:
    return COMPONENTS[request.param]


def test_the_file_is_read_then_each_variable_overrides_its_option(
    component: Component, tmp_path: Path
) -> None:
    option, in_file, in_env, field, expected = component.override
    path = _file(tmp_path, f"{option}: {in_file}\n")
    assert getattr(component.load(path, component.env), field) == in_file
    variable = _variable(component, option)
    config = component.load(path, {**component.env, variable: in_env})
    assert getattr(config, field) == expected
    snake = _file(tmp_path, f"{field}: {in_file}\n")  # snake_case keys are the same option
    assert getattr(component.load(snake, component.env), field) == in_file


def test_a_list_in_a_variable_is_comma_separated(component: Component, tmp_path: Path) -> None:
    option, raw, field, expected = component.listed
    config = component.load(None, {**component.env, _variable(component, option): raw})
    assert [str(item) for item in getattr(config, field)] == expected
    in_file = component.load(_file(tmp_path, f"{option}: {expected}\n"), component.env)
    assert getattr(config, field) == getattr(in_file, field), "a YAML list in the file is the same list"


def test_every_bad_option_is_named_at_once(component: Component, tmp_path: Path) -> None:
    (file_option, file_value), (env_option, env_value) = component.bad
    path = _file(tmp_path, f"{file_option}: {file_value}\n")
    variable = _variable(component, env_option)
    with pytest.raises(ConfigError) as info:
        component.load(path, {**component.env, variable: env_value})
    message = str(info.value)
    assert f"{file_option}: " in message, message
    assert f"{env_option}: " in message and f"(set by {variable})" in message, message


def test_an_unknown_option_in_the_file_is_named(component: Component, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stateDirectory: not an option"):
        component.load(_file(tmp_path, "stateDirectory: /x\n"), component.env)


@pytest.mark.parametrize(
    ("text", "words"),
    [("a: [\n", "is not valid YAML"), ("- a\n- b\n", "must hold a mapping of options")],
)
def test_a_file_that_is_no_mapping_is_refused(
    component: Component, tmp_path: Path, text: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        component.load(_file(tmp_path, text), component.env)
    with pytest.raises(ConfigError, match="cannot read"):
        component.load(tmp_path / "missing.yaml", component.env)


def test_a_required_option_names_every_way_to_set_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {})
    assert "nodeName: required (set NODE_NAME, VMSANDBOX_AGENT_NODE_NAME or nodeName" in str(info.value)
    assert load_config(None, {"NODE_NAME": "a", "VMSANDBOX_AGENT_NODE_NAME": "b"}).node_name == "b"


def test_the_operator_and_the_runtime_raise_their_component_error() -> None:
    with pytest.raises(ConfigError) as info:
        OperatorConfig.load(None, {"VMSANDBOX_OPERATOR_WORKERS": "0"})
    assert str(info.value).startswith("operator config: workers: ")
    # The agent reads the drivers' settings too: its one ``except ConfigError`` catches them.
    with pytest.raises(ConfigError, match="qemuAccel"):
        HypervisorConfig.load(environ={"VMSANDBOX_QEMU_ACCEL": "fast"})


def test_the_runtime_command_reads_a_settings_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--root", str(tmp_path / "root")]
    bad = _file(tmp_path, "ociRuntime: docker\n")
    assert runtime_cli(["--config", str(bad), *root, "list"]) == 1
    assert "ociRuntime: " in capsys.readouterr().err
    good = _file(tmp_path, "ociRuntime: crun\ncloudHypervisorArgs: [-v]\n")
    assert runtime_cli(["--config", str(good), *root, "list", "--quiet"]) == 0


def test_the_loader_takes_any_settings_model(tmp_path: Path) -> None:
    class Knobs(BaseModel):
        tags: list[str] = []
        limit: int | None = None

    path = _file(tmp_path, "limit: 3\n")
    knobs = load_settings(Knobs, "X_", path, {"X_TAGS": "a,b"})
    assert knobs == Knobs(tags=["a", "b"], limit=3)


# ---- timing shared by the operator and the agents ------------------------------------------


def test_the_agent_lease_and_the_operator_window_are_one_value() -> None:
    agent, operator = AgentConfig(node_name="n1"), OperatorConfig()
    assert agent.lease_duration_seconds == operator.agent_alive_seconds == AGENT_LEASE_SECONDS
    assert agent.node_lost_grace_seconds == operator.node_lost_grace_seconds == NODE_LOST_GRACE_SECONDS
    assert agent.lease_renew_seconds == AGENT_LEASE_RENEW_SECONDS


def test_a_lease_renewed_within_its_duration_keeps_the_node_alive() -> None:
    agent, operator = AgentConfig(node_name="n1"), OperatorConfig()
    now = datetime.now(UTC)

    def alive_after(seconds: float) -> bool:
        view = NodeView("n1", labels={AGENT_READY_LABEL: "ready"}, renewed=now - timedelta(seconds=seconds))
        return view.agent_alive(now, operator.agent_alive_seconds)

    # Several renewals fit in the window, and the window is exactly the duration the agent claims.
    assert alive_after(3 * agent.lease_renew_seconds)
    assert alive_after(agent.lease_duration_seconds - 0.5)
    assert not alive_after(agent.lease_duration_seconds + 0.5)


def test_an_agent_fences_before_the_operator_declares_its_node_lost() -> None:
    agent, operator = AgentConfig(node_name="n1"), OperatorConfig()
    silence = operator.node_lost_grace_seconds - 0.5
    fence = Fence(lambda: silence, agent.node_lost_grace_seconds, agent.lease_renew_seconds)
    assert fence.due(), "the agent stops its sandboxes before the operator runs them elsewhere"
    assert (
        Fence(
            lambda: agent.lease_duration_seconds, agent.node_lost_grace_seconds, agent.lease_renew_seconds
        ).due()
        is False
    )


def test_a_lease_renewed_no_more_often_than_it_lasts_is_refused() -> None:
    env = {"NODE_NAME": "n1", "VMSANDBOX_AGENT_LEASE_RENEW_SECONDS": str(AGENT_LEASE_SECONDS)}
    with pytest.raises(ConfigError, match="leaseRenewSeconds must be shorter than leaseDurationSeconds"):
        load_config(None, env)
    with pytest.raises(ConfigError, match="nodeLostGraceSeconds must not be shorter than agentAliveSeconds"):
        OperatorConfig.load(
            None, {"VMSANDBOX_OPERATOR_NODE_LOST_GRACE_SECONDS": str(AGENT_LEASE_SECONDS - 1)}
        )
