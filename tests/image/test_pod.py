"""The translation from rendered workloads to podman flags: what it carries over, and that a field
it cannot reproduce fails instead of being dropped (so a chart change cannot slip past the run test)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import get_helm, one
from tests.image.pod import PodIdentity, UnsupportedField, config_maps, container_run

IDENTITY = PodIdentity(name="pod-a", namespace="ns-a", node="node-a")


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("node")


@pytest.fixture(scope="module")
def rendered(node_dir: Path) -> list[dict[str, Any]]:
    return get_helm().render(
        sets=[
            f"agent.hostPaths.state={node_dir}/state",
            f"agent.hostPaths.run={node_dir}/run",
            "subresources.enabled=false",  # its certificate is a Secret, which a podman run has not
        ]
    )


def _run(
    workload: dict[str, Any], objects: list[dict[str, Any]], tmp_path: Path, user: str = "65532:65532"
) -> Any:
    return container_run(
        workload, identity=IDENTITY, workdir=tmp_path, config_maps=config_maps(objects), image_user=user
    )


def test_operator_flags_follow_the_deployment(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    run = _run(one(rendered, "Deployment"), rendered, tmp_path)
    flags = run.flags
    assert flags[flags.index("--user") + 1] == "65532:65532"
    assert flags[flags.index("--cap-drop") + 1] == "ALL" and "--privileged" not in flags
    assert "no-new-privileges" in flags and "--read-only" in flags
    env = [flags[i + 1] for i, f in enumerate(flags) if f == "--env"]
    assert "VMSANDBOX_OPERATOR_NAMESPACE=ns-a" in env and "VMSANDBOX_OPERATOR_IDENTITY=pod-a" in env
    assert run.argv == ["--config", "/etc/vmsandbox/operator.yaml"]
    assert flags[flags.index("--entrypoint") + 1] == '["vmsandbox-operator"]'
    config_dir = tmp_path / "configmap" / "config"
    assert f"{config_dir}:/etc/vmsandbox:ro" in flags
    assert (config_dir / "operator.yaml").is_file()


def test_agent_flags_follow_the_daemonset(
    rendered: list[dict[str, Any]], node_dir: Path, tmp_path: Path
) -> None:
    run = _run(one(rendered, "DaemonSet"), rendered, tmp_path)
    flags = run.flags
    assert "--privileged" in flags and flags[flags.index("--user") + 1] == "0:0"
    env = [flags[i + 1] for i, f in enumerate(flags) if f == "--env"]
    assert {"NODE_NAME=node-a", "POD_NAMESPACE=ns-a", "VMSANDBOX_AGENT_ADVERTISE_ADDRESS=127.0.0.1"} <= set(
        env
    )
    assert f"{node_dir}/state:/var/lib/vmsandbox" in flags and (node_dir / "state").is_dir()
    assert f"{node_dir}/run:/run/vmsandbox" in flags
    assert run.ports == {"http": 8081}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, p: c["securityContext"].update(procMount="Unmasked"), "securityContext ['procMount']"),
        (lambda c, p: c["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {}}}), "env X"),
        (
            lambda c, p: c["env"].append({"name": "Y", "valueFrom": {"fieldRef": {"fieldPath": "spec.x"}}}),
            "spec.x",
        ),
        (lambda c, p: p["volumes"].append({"name": "s", "secret": {}}), "volume s"),
        (
            lambda c, p: c["volumeMounts"].append({"name": "tmp", "mountPath": "/x", "subPath": "a"}),
            "volumeMount",
        ),
        (lambda c, p: p.update(initContainers=[{"name": "i"}]), "initContainers"),
    ],
)
def test_a_field_it_cannot_reproduce_fails(
    rendered: list[dict[str, Any]], tmp_path: Path, change: Any, message: str
) -> None:
    workload = copy.deepcopy(one(rendered, "Deployment"))
    pod = workload["spec"]["template"]["spec"]
    if message == "volume s":
        pod["containers"][0]["volumeMounts"].append({"name": "s", "mountPath": "/s"})
    change(pod["containers"][0], pod)
    with pytest.raises(UnsupportedField, match=message.replace("[", r"\[").replace("]", r"\]")):
        _run(workload, rendered, tmp_path)


def test_run_as_non_root_refuses_a_root_user(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    workload = copy.deepcopy(one(rendered, "Deployment"))
    pod = workload["spec"]["template"]["spec"]
    del pod["securityContext"]["runAsUser"]
    with pytest.raises(AssertionError, match="runAsNonRoot but the user is '0'"):
        _run(workload, rendered, tmp_path, user="0")
    # The image's own non-root user satisfies it, as kubelet would accept.
    assert _run(workload, rendered, tmp_path, user="65532:65532").user is None
