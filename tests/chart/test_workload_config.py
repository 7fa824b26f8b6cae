"""The pods the chart renders start with a configuration the real programs accept.

The ConfigMaps and environment are fed to the operator's and the agent's own loaders
(``OperatorConfig.load``, ``node_agent.config.load_config``), so a renamed setting or a
mount that does not match the agent's paths fails here, not on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.chart.helm import NAMESPACE, VALUES_DIR, by_kind, one, value_files
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.node_agent.config import AgentConfig, load_config
from vmsandbox.operator.config import OperatorConfig

Render = Callable[..., list[dict[str, Any]]]
RenderedAgent = tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, str], AgentConfig]
CASES: list[tuple[Path, ...]] = [(), *[(p,) for p in value_files()]]
#: What the downward API would give a pod.
POD = {
    "metadata.namespace": NAMESPACE,
    "metadata.name": "vmsandbox-pod-0",
    "spec.nodeName": "kvm-node-1",
    "status.podIP": "10.244.1.7",
}


def _ids(case: tuple[Path, ...]) -> str:
    return case[0].stem if case else "defaults"


def _environ(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = POD[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _config_file(objects: list[dict[str, Any]], workload: dict[str, Any], tmp_path: Path) -> Path:
    """The file the container's --config names, written from the ConfigMap mounted there."""
    spec = workload["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = container["args"]
    target = PurePosixPath(args[args.index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if target.parent == PurePosixPath(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    configmap = next(
        c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]
    )
    path = tmp_path / target.name
    path.write_text(configmap["data"][target.name])
    return path


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def _host_mounts(workload: dict[str, Any]) -> dict[str, str]:
    """mountPath -> host path, for the hostPath volumes of the (only) container."""
    spec = workload["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = spec["containers"][0]["volumeMounts"]
    return {m["mountPath"]: host[m["name"]] for m in mounts if m["name"] in host}


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_operator_accepts_its_rendered_configuration(
    render: Render, case: tuple[Path, ...], tmp_path: Path
) -> None:
    objects = render(*case)
    deployment = one(objects, "Deployment", "-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config = OperatorConfig.load(_config_file(objects, deployment, tmp_path), _environ(container))
    ports = _ports(container)
    assert config.namespace == NAMESPACE
    assert config.identity == POD["metadata.name"], "two replicas must not share a Lease identity"
    assert config.leader_election
    role = one(objects, "Role", "-operator")
    assert role["metadata"]["namespace"] == config.namespace
    assert config.liveness_endpoint is not None
    assert config.liveness_endpoint.endswith(f":{ports['health']}/healthz")
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert config.metrics_port == ports["metrics"]
    webhook = bool(by_kind(objects, "ValidatingWebhookConfiguration"))
    assert config.webhook is webhook
    if webhook:
        assert config.webhook_port == ports["webhook"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert config.webhook_certfile is not None and config.webhook_keyfile is not None
        assert mounts[str(config.webhook_certfile.parent)] == "webhook-tls"
        assert (config.webhook_certfile.name, config.webhook_keyfile.name) == ("tls.crt", "tls.key")


def _rendered_agent(render: Render, case: tuple[Path, ...], tmp_path: Path) -> RenderedAgent:
    """The rendered objects, the agent's DaemonSet, container and environment, and its config."""
    objects = render(*case)
    daemonset = one(objects, "DaemonSet", "-agent")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    env = _environ(container)
    return objects, daemonset, container, env, load_config(_config_file(objects, daemonset, tmp_path), env)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_agent_accepts_its_rendered_configuration(
    render: Render, case: tuple[Path, ...], tmp_path: Path
) -> None:
    objects, _, container, _, config = _rendered_agent(render, case, tmp_path)
    assert config.node_name == POD["spec.nodeName"]
    assert config.namespace == NAMESPACE
    assert one(objects, "Role", "-agent")["metadata"]["namespace"] == config.namespace
    assert config.port == _ports(container)["http"]
    assert config.advertise_address == POD["status.podIP"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_agent_mounts_exactly_what_its_configuration_uses(
    render: Render, case: tuple[Path, ...], tmp_path: Path
) -> None:
    _, daemonset, container, env, config = _rendered_agent(render, case, tmp_path)
    mounts = _host_mounts(daemonset)
    expected = {str(config.state_dir), str(config.runtime_root)}
    privileged = container["securityContext"].get("privileged", False)
    if privileged:
        expected.add("/dev/kvm")
    if config.vmm_cgroup_parent:  # each VM's cgroup is made in the node's tree
        expected.add("/sys/fs/cgroup")
    assert set(mounts) == expected
    # The agent's own defaults: the chart mounts where the agent looks without being told.
    defaults = AgentConfig.model_fields
    assert str(config.state_dir) == str(defaults["state_dir"].default)
    assert str(config.runtime_root) == str(defaults["runtime_root"].default)
    # The guest image ships in the container image: it must not be under a hostPath,
    # which would hide it (HypervisorConfig's own default is under the state directory).
    guest = config.guest_image_dir
    assert guest is not None
    assert HypervisorConfig.load(environ=env).guest_image_dir == guest
    for mount_path in mounts:
        assert not guest.is_relative_to(mount_path), f"{guest} is hidden by the hostPath at {mount_path}"


def test_agent_host_paths_follow_values(render: Render) -> None:
    """Host directories move with values; the agent still sees its default paths."""
    import yaml

    from tests.chart.helm import get_helm

    objects = get_helm().render(
        sets=["agent.hostPaths.state=/srv/vmsandbox", "agent.hostPaths.run=/run/vmsb"]
    )
    mounts = _host_mounts(one(objects, "DaemonSet", "-agent"))
    assert mounts["/var/lib/vmsandbox"] == "/srv/vmsandbox"
    assert mounts["/run/vmsandbox"] == "/run/vmsb"
    assert yaml.safe_load(one(objects, "ConfigMap", "-agent-config")["data"]["agent.yaml"]) == {}


def test_agent_config_values_reach_the_agent(render: Render, tmp_path: Path) -> None:
    objects = render(VALUES_DIR / "device-plugin.yaml")
    daemonset = one(objects, "DaemonSet", "-agent")
    env = _environ(daemonset["spec"]["template"]["spec"]["containers"][0])
    config = load_config(_config_file(objects, daemonset, tmp_path), env)
    assert config.allowed_hypervisors == ["cloud-hypervisor"]


def _agent_option(option: str, *sets: str) -> object:
    """``option`` in the agents' rendered config file, with ``sets`` as ``--set`` values."""
    import yaml

    from tests.chart.helm import get_helm

    objects = get_helm().render(sets=list(sets))
    return yaml.safe_load(one(objects, "ConfigMap", "-agent-config")["data"]["agent.yaml"]).get(option)


def test_agents_fence_on_the_operators_node_loss_grace(render: Render) -> None:
    """Agents stop their rescheduled sandboxes just before the operator declares their node
    lost, so both must read one grace: the chart copies the operator's unless the agent's is set."""

    def agent_grace(*sets: str) -> object:
        return _agent_option("nodeLostGraceSeconds", *sets)

    assert agent_grace("operator.config.nodeLostGraceSeconds=120") == 120
    assert (
        agent_grace("operator.config.nodeLostGraceSeconds=120", "agent.config.nodeLostGraceSeconds=90") == 90
    )
    assert agent_grace() is None  # both keep their default, 60 s
    assert AgentConfig.model_fields["node_lost_grace_seconds"].default == (
        OperatorConfig.model_fields["node_lost_grace_seconds"].default
    )


def test_agent_leases_last_the_operators_liveness_window(render: Render) -> None:
    """The operator counts a node alive while its agent's Lease is younger than agentAliveSeconds;
    the agents' Leases say as much, in whole seconds, unless the agent's duration is set."""

    def agent_lease(*sets: str) -> object:
        return _agent_option("leaseDurationSeconds", *sets)

    assert agent_lease("operator.config.agentAliveSeconds=30") == 30
    assert agent_lease("operator.config.agentAliveSeconds=30.5") == 31
    assert agent_lease("operator.config.agentAliveSeconds=30", "agent.config.leaseDurationSeconds=50") == 50
    assert agent_lease() is None  # both keep their default, api.timing.AGENT_LEASE_SECONDS


def test_agent_rejects_a_bad_config_value(helm_bad_config: tuple[Path, dict[str, str]]) -> None:
    """A typo in agent.config passes the chart (it is free-form) but the agent names it at start-up."""
    from vmsandbox.node_agent.config import ConfigError

    path, env = helm_bad_config
    with pytest.raises(ConfigError, match="defaultHypervisorr"):
        load_config(path, env)


@pytest.fixture
def helm_bad_config(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    from tests.chart.helm import get_helm

    objects = get_helm().render(sets=["agent.config.defaultHypervisorr=qemu"])
    daemonset = one(objects, "DaemonSet", "-agent")
    env = _environ(daemonset["spec"]["template"]["spec"]["containers"][0])
    return _config_file(objects, daemonset, tmp_path), env
