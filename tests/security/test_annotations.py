"""Reserved annotation prefixes: a tenant cannot choose the pod role, another sandbox's VM, or a
runtime hook through ``spec.annotations``. Refused by the CRD, by admission, stripped by the agent,
and the runtime checks every id it turns into a path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from tests.e2e.processes import OperatorProcess
from tests.node_agent.support import AgentProcess, Cluster, Registry, containers_left, unique
from tests.operator.factories import sandbox_obj
from tests.security.support import Tenant
from vmsandbox.api import InvalidSandbox, parse_sandbox
from vmsandbox.api.constants import RESERVED_ANNOTATION_PREFIXES
from vmsandbox.node_agent.images import ImageConfig
from vmsandbox.node_agent.ociconfig import build_config
from vmsandbox.operator.admission import admit
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.errors import InvalidConfig, InvalidId

MakeAgent = Callable[..., AgentProcess]
JOIN_KEYS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id")


def _refusal(exc: ApiException) -> str:
    assert exc.status == 422, (exc.status, exc.body)
    return str(json.loads(exc.body)["message"])


@pytest.mark.kube
@pytest.mark.parametrize("prefix", RESERVED_ANNOTATION_PREFIXES)
def test_the_crd_refuses_every_reserved_prefix(tenant: Tenant, prefix: str, registry: Registry) -> None:
    name = unique("resv")
    key = f"{prefix}anything"
    spec = {
        "image": f"{registry.host}/test/busybox:latest",
        "annotations": {"ok.example.com/x": "1", key: "v"},
    }
    with pytest.raises(ApiException) as info:
        tenant.cluster.create_sandbox(name, spec)
    assert f'spec.annotations["{key}"]' in _refusal(info.value)
    assert tenant.cluster.get(name) is None


@pytest.mark.kube
def test_a_tenant_cannot_join_another_sandboxs_vm(
    operator: OperatorProcess, make_agent: MakeAgent, cluster: Cluster, tenant: Tenant, registry: Registry
) -> None:
    agent = make_agent()
    victim = unique("victim")
    cluster.create_sandbox(
        victim, {"image": f"{registry.host}/test/busybox:latest", "command": ["sleep", "300"]}
    )
    status = cluster.wait_phase(victim, "Running", timeout=90)
    victim_id = status["container"]["id"]
    assert containers_left(agent.runtime_root) == [victim_id]

    attacker = unique("attacker")
    spec = {
        "image": f"{registry.host}/test/busybox:latest",
        "command": ["true"],
        "annotations": {JOIN_KEYS[0]: "container", JOIN_KEYS[1]: victim_id},
    }
    with pytest.raises(ApiException) as info:
        tenant.cluster.create_sandbox(attacker, spec)
    message = _refusal(info.value)
    assert any(f'spec.annotations["{key}"]' in message for key in JOIN_KEYS), message
    assert tenant.cluster.get(attacker) is None
    # The victim's VM still holds exactly its own container, and still runs it.
    assert containers_left(agent.runtime_root) == [victim_id]
    assert cluster.status(victim)["phase"] == "Running"


@pytest.mark.parametrize("prefix", RESERVED_ANNOTATION_PREFIXES)
def test_admission_names_each_reserved_key(prefix: str) -> None:
    """Where the CRD lacks the rule (an older CRD), the operator refuses: phase Failed, reason Invalid."""
    key = f"{prefix}sandbox-id"
    with pytest.raises(InvalidSandbox) as info:
        admit(sandbox_obj(annotations={key: "x", "example.com/fine": "y"}), OperatorConfig())
    assert [path for path, _ in info.value.problems] == [f'spec.annotations["{key}"]']
    assert "reserved" in str(info.value)


def test_the_agent_strips_reserved_keys_and_sets_the_pod_role(tmp_path: Path) -> None:
    obj = sandbox_obj(
        annotations={
            JOIN_KEYS[0]: "container",
            JOIN_KEYS[1]: "vmsb-victim",
            "io.katacontainers.config.hypervisor.path": "/tmp/evil",
            "run.oci.hooks": "x",
            "example.com/kept": "yes",
        }
    )
    obj["metadata"]["uid"] = "u-1"
    sandbox = parse_sandbox(obj)
    annotations = build_config(sandbox, ImageConfig(cmd=["true"]), tmp_path)["annotations"]
    assert annotations[JOIN_KEYS[0]] == "sandbox"
    assert JOIN_KEYS[1] not in annotations
    assert (
        "io.katacontainers.config.hypervisor.path" not in annotations and "run.oci.hooks" not in annotations
    )
    assert annotations["example.com/kept"] == "yes"
    assert annotations["io.vmsandbox.sandbox.uid"] == "u-1"


def _bundle(directory: Path, annotations: dict[str, str]) -> Path:
    (directory / "rootfs").mkdir(parents=True)
    config = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"cwd": "/", "args": ["true"]},
        "annotations": annotations,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("sandbox_id", ["../../victim", "/abs", "a/b", ".hidden", "x" * 256])
def test_the_runtime_refuses_a_sandbox_id_that_is_not_an_id(tmp_path: Path, sandbox_id: str) -> None:
    root = tmp_path / "root"
    runtime = Runtime(root, "process")
    bundle = _bundle(tmp_path / "bundle", {JOIN_KEYS[0]: "container", JOIN_KEYS[1]: sandbox_id})
    with pytest.raises(InvalidConfig) as info:
        runtime.create("attacker", bundle)
    assert info.value.step == f"config.json: annotations.{JOIN_KEYS[1]}"
    assert runtime.store.ids() == []  # nothing was left behind


@pytest.mark.parametrize("bad", ["../x", "a/../../b", "/etc"])
def test_every_id_the_runtime_turns_into_a_path_is_checked(tmp_path: Path, bad: str) -> None:
    runtime = Runtime(tmp_path / "root", "process")
    for call in (runtime.state, runtime.start, lambda i: runtime.delete(i, force=True)):
        with pytest.raises(InvalidId):
            call(bad)
    with pytest.raises(InvalidId):
        runtime.store.dir(bad)
