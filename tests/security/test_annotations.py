"""Reserved annotation prefixes: a tenant cannot choose the pod role, another sandbox's VM, or a
runtime hook through ``spec.annotations``. Refused by the CRD, by admission, stripped by the agent,
and the runtime checks every id it turns into a path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.e2e.processes import OperatorProcess
from tests.node_agent.support import Cluster, MakeAgent, Registry, containers_left, unique
from tests.operator.factories import sandbox_obj
from tests.security.support import OPERATOR_SETTINGS, Tenant
from vmsandbox.api import InvalidSandbox, parse_sandbox
from vmsandbox.api.constants import RESERVED_ANNOTATION_PREFIXES
from vmsandbox.api.crd import render
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.node_agent.images import ImageConfig
from vmsandbox.node_agent.ociconfig import build_config
from vmsandbox.operator.admission import admit
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.errors import InvalidConfig, InvalidId

REPO = Path(__file__).resolve().parents[2]
JOIN_KEYS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id")


def _refusal(exc: ApiException) -> str:
    assert exc.status == 422, (exc.status, exc.body)
    return str(json.loads(exc.body or "{}")["message"])


@pytest.mark.kube
@pytest.mark.parametrize("prefix", RESERVED_ANNOTATION_PREFIXES)
def test_the_crd_refuses_every_reserved_prefix(tenant: Tenant, prefix: str, registry: Registry) -> None:
    name = unique("resv")
    key = f"{prefix}anything"
    spec = {
        "image": registry.busybox,
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
    cluster.create_sandbox(victim, registry.sandbox(["sleep", "300"]))
    status = cluster.wait_phase(victim, "Running", timeout=90)
    victim_id = status["container"]["id"]
    assert containers_left(agent.runtime_root) == [victim_id]

    attacker = unique("attacker")
    spec = registry.sandbox(["true"], annotations={JOIN_KEYS[0]: "container", JOIN_KEYS[1]: victim_id})
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


@pytest.fixture
def crd_without_the_rule(kube: LocalCluster, tmp_path: Path) -> Iterator[None]:
    """An older CRD: the annotation rule missing, as on clusters installed before it existed."""
    crd = render()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["annotations"]["x-kubernetes-validations"]
    path = tmp_path / "old-crd.yaml"
    path.write_text(yaml.safe_dump(crd))
    kube.install_crds([path])
    try:
        yield
    finally:
        kube.install_crds(REPO / "crds")


@pytest.mark.kube
def test_without_the_crd_rule_the_operator_refuses_and_the_agent_strips(
    crd_without_the_rule: None,
    kube: LocalCluster,
    make_agent: MakeAgent,
    cluster: Cluster,
    tenant: Tenant,
    registry: Registry,
    tmp_path: Path,
) -> None:
    image = registry.busybox
    join = {JOIN_KEYS[0]: "container"}
    # The operator's admission: Failed, reason Invalid, naming the key.
    operator = OperatorProcess(kube, cluster.namespace, unique("op"), tmp_path, **OPERATOR_SETTINGS)
    try:
        refused = unique("refused")
        tenant.cluster.create_sandbox(refused, {"image": image, "command": ["true"], "annotations": join})
        status = tenant.cluster.wait_phase(refused, "Failed", timeout=60)
    finally:
        assert operator.stop() == 0, operator.log()[-3000:]
    assert status["reason"] == "Invalid"
    assert status["message"].startswith(f'spec.annotations["{JOIN_KEYS[0]}"]: '), status
    assert "nodeName" not in status

    # The agent's backstop, had the sandbox reached it anyway (scheduled here by hand): the
    # reserved keys are dropped and the sandbox gets a VM of its own.
    agent = make_agent()
    victim = unique("victim")
    cluster.create_sandbox(victim, {"image": image, "command": ["sleep", "300"]}, node=agent.node)
    victim_id = cluster.wait_phase(victim, "Running", timeout=90)["container"]["id"]
    attacker = unique("attacker")
    spec = {"image": image, "command": ["sleep", "300"], "annotations": {**join, JOIN_KEYS[1]: victim_id}}
    cluster.create_sandbox(attacker, spec, node=agent.node)
    running = cluster.wait_phase(attacker, "Running", timeout=90)
    states = {cid: Runtime(agent.runtime_root).state(cid) for cid in containers_left(agent.runtime_root)}
    attacker_id = running["container"]["id"]
    assert set(states) == {victim_id, attacker_id}
    vmm_pids = {cid: state.vm.vmm_pid if state.vm else None for cid, state in states.items()}
    assert None not in vmm_pids.values() and vmm_pids[victim_id] != vmm_pids[attacker_id]  # two VMs
    assert states[attacker_id].annotations[JOIN_KEYS[0]] == "sandbox"
    assert JOIN_KEYS[1] not in states[attacker_id].annotations


def test_a_tenant_cannot_name_a_pool_member_or_a_snapshot(tmp_path: Path) -> None:
    """The annotations that hand a sandbox a pool member's VM or a snapshot come from the agent's
    claim alone: a tenant's copies are dropped, and a cold start's bundle names neither."""
    from vmsandbox.api.reasons import StatusReason
    from vmsandbox.node_agent.poolkeeper import Claim
    from vmsandbox.node_agent.warmstart import mark_bundle
    from vmsandbox.runtime.members import MEMBER_ANNOTATION
    from vmsandbox.runtime.snapshots import ANNOTATION_RESTORE_FROM

    obj = sandbox_obj(
        annotations={MEMBER_ANNOTATION: "vmsbp-0123456789abcdef", ANNOTATION_RESTORE_FROM: "/etc"}
    )
    config = build_config(parse_sandbox(obj), ImageConfig(cmd=["true"]), tmp_path)
    assert MEMBER_ANNOTATION not in config["annotations"]
    assert ANNOTATION_RESTORE_FROM not in config["annotations"]
    config["annotations"][MEMBER_ANNOTATION] = "vmsbp-0123456789abcdef"  # as if it had slipped through
    (tmp_path / "config.json").write_text(json.dumps(config))
    mark_bundle(tmp_path, Claim(None, StatusReason.POOL_EMPTY, "cold"))
    written = json.loads((tmp_path / "config.json").read_text())["annotations"]
    assert MEMBER_ANNOTATION not in written and ANNOTATION_RESTORE_FROM not in written
    mark_bundle(tmp_path, Claim("vmsbp-fedcba9876543210", StatusReason.CLAIMED_FROM_POOL, "warm"))
    written = json.loads((tmp_path / "config.json").read_text())["annotations"]
    assert written[MEMBER_ANNOTATION] == "vmsbp-fedcba9876543210"
