"""Admission rules beyond the CRD schema: each problem names its field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.factories import sandbox_obj
from vmsandbox.api import Hypervisor, InvalidSandbox
from vmsandbox.operator.admission import admit
from vmsandbox.operator.config import OperatorConfig

CONFIG = OperatorConfig()


def problem(obj: dict[str, Any], config: OperatorConfig = CONFIG) -> InvalidSandbox:
    with pytest.raises(InvalidSandbox) as info:
        admit(obj, config)
    return info.value


def test_valid_sandbox_is_admitted_and_status_never_matters() -> None:
    obj = sandbox_obj(hypervisor="cloud-hypervisor")
    obj["status"] = {"phase": "NotAPhase"}
    assert admit(obj, CONFIG).spec.hypervisor is Hypervisor.CLOUD_HYPERVISOR


def test_qemu_is_refused_unless_an_admin_lists_it() -> None:
    exc = problem(sandbox_obj(hypervisor="qemu"))
    assert exc.field == "spec.hypervisor"
    assert "(allowed: cloud-hypervisor)" in str(exc)
    allowed = OperatorConfig(allowed_hypervisors=[Hypervisor.CLOUD_HYPERVISOR, Hypervisor.QEMU])
    assert admit(sandbox_obj(hypervisor="qemu"), allowed).spec.hypervisor is Hypervisor.QEMU


@pytest.mark.parametrize("image", ["Busybox:latest", "busybox:", "registry:5000/UPPER", "oci:relative/path"])
def test_bad_image_reference_names_spec_image(image: str) -> None:
    exc = problem(sandbox_obj(image=image))
    assert exc.field == "spec.image"


def test_process_hypervisor_is_refused_unless_allowed() -> None:
    exc = problem(sandbox_obj(hypervisor="process"))
    assert exc.field == "spec.hypervisor"
    assert "not allowed on this cluster" in str(exc) and "(allowed: cloud-hypervisor)" in str(exc)
    allowed = OperatorConfig(allowed_hypervisors=[Hypervisor.PROCESS])
    assert admit(sandbox_obj(hypervisor="process"), allowed).spec.hypervisor is Hypervisor.PROCESS


@pytest.mark.parametrize(
    ("toleration", "field"),
    [
        ({"key": "gpu", "operator": "Exists", "value": "true"}, "spec.tolerations[0].value"),
        ({"operator": "Equal", "value": "x"}, "spec.tolerations[0].key"),
        ({"key": "bad key!", "operator": "Exists"}, "spec.tolerations[0].key"),
        ({"key": "gpu", "value": "a b"}, "spec.tolerations[0].value"),
        (
            {"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5},
            "spec.tolerations[0].tolerationSeconds",
        ),
        ({"key": "gpu", "operator": "Sometimes"}, "spec.tolerations[0].operator"),
    ],
)
def test_malformed_tolerations(toleration: dict[str, Any], field: str) -> None:
    assert problem(sandbox_obj(tolerations=[toleration])).field == field


def test_empty_key_with_exists_tolerates_everything_and_is_valid() -> None:
    assert admit(sandbox_obj(tolerations=[{"operator": "Exists"}]), CONFIG).spec.tolerations


@pytest.mark.parametrize(
    "selector", [{"bad key": "x"}, {"-lead": "x"}, {"ok": "bad value!"}, {"UP.case/x": "y"}]
)
def test_node_selector_label_syntax(selector: dict[str, str]) -> None:
    key = next(iter(selector))
    assert problem(sandbox_obj(nodeSelector=selector)).field == f"spec.nodeSelector.{key}"


def test_every_problem_is_reported() -> None:
    exc = problem(
        sandbox_obj(hypervisor="process", tolerations=[{"key": "a", "operator": "Exists", "value": "v"}])
    )
    assert [p[0] for p in exc.problems] == ["spec.hypervisor", "spec.tolerations[0].value"]


def test_schema_level_errors_name_their_field_too() -> None:
    assert problem(sandbox_obj(vcpus=0)).field == "spec.resources.vcpus"
