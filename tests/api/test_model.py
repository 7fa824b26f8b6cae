"""The pydantic models: defaults, bounds and the field named by every error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.cases import INVALID, VALID_IMAGES, sandbox
from vmsandbox.api import (
    BootTimings,
    ConditionStatus,
    ConditionType,
    InvalidSandbox,
    Phase,
    PullPolicy,
    RestartPolicy,
    VMSandboxStatus,
    parse_sandbox,
)
from vmsandbox.api.image_ref import is_image_reference


def test_defaults_fill_an_empty_spec() -> None:
    sb = parse_sandbox(sandbox())
    assert sb.spec.image_pull_policy is PullPolicy.IF_NOT_PRESENT
    assert sb.spec.restart_policy is RestartPolicy.NEVER
    assert (sb.spec.resources.vcpus, sb.spec.resources.memory_mib) == (1, 512)
    assert sb.spec.hypervisor is None
    wire = sb.to_wire()
    assert wire["spec"]["resources"] == {"vcpus": 1, "memoryMiB": 512}
    assert "hypervisor" not in wire["spec"], "unset optional fields must not be sent as null"


def test_full_spec_round_trips_through_the_wire_form() -> None:
    obj = sandbox(
        imagePullPolicy="Always",
        command=["sh", "-c"],
        args=["echo hi"],
        env=[{"name": "GREETING", "value": "hi"}, {"name": "_X"}],
        workingDir="/srv",
        resources={"vcpus": 64, "memoryMiB": 262144},
        hypervisor="qemu",
        nodeSelector={"zone": "a"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        restartPolicy="OnFailure",
        activeDeadlineSeconds=0,
        ttlSecondsAfterFinished=30,
        annotations={"io.kubernetes.cri.container-type": "sandbox"},
    )
    sb = parse_sandbox(obj)
    assert parse_sandbox(sb.to_wire()) == sb
    assert sb.to_wire()["spec"]["env"][1] == {"name": "_X", "value": ""}


@pytest.mark.parametrize(("case", "obj", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_model_rejects_with_the_field_named(case: str, obj: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSandbox) as err:
        parse_sandbox(obj)
    assert err.value.field.startswith(field), str(err.value)
    assert str(err.value).startswith(f"validation: {err.value.field}")


@pytest.mark.parametrize("image", VALID_IMAGES)
def test_image_references_accepted(image: str) -> None:
    assert is_image_reference(image)
    assert parse_sandbox(sandbox(image=image)).spec.image == image


@pytest.mark.parametrize(
    "image", ["", "UPPER/case", "busybox:", "busybox@sha256:abc", ":tag", "a//b", "oci:rel/path", "busy box"]
)
def test_image_references_rejected(image: str) -> None:
    assert not is_image_reference(image)


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    status = VMSandboxStatus(phase=Phase.PENDING)
    status.set_condition(ConditionType.SCHEDULED, ConditionStatus.FALSE, "Unschedulable", "no nodes")
    first = status.condition(ConditionType.SCHEDULED)
    assert first is not None and first.last_transition_time is not None
    status.set_condition(ConditionType.SCHEDULED, ConditionStatus.FALSE, "Unschedulable", "still none")
    again = status.condition(ConditionType.SCHEDULED)
    assert again is not None
    assert again.last_transition_time == first.last_transition_time
    assert again.message == "still none"
    assert len(status.conditions or []) == 1


def test_finished_phases() -> None:
    assert {p for p in Phase if p.finished} == {Phase.SUCCEEDED, Phase.FAILED}


def test_boot_timings_are_written_with_one_decimal() -> None:
    timings = BootTimings(agent_ready=4494.2895170000265, vm_boot=2945.04)
    timings.schedule = 21.456  # assigned after validation, as a writer may do
    assert timings.agent_ready == 4494.3
    assert timings.to_wire() == {"schedule": 21.5, "vmBoot": 2945.0, "agentReady": 4494.3}
    with pytest.raises(ValueError, match="image"):
        BootTimings(image=-1)
