"""Each failure kind carries its reason and whether retrying can help; a launch's error is told
apart by its type, never by the words of its step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vmsandbox.api.reasons import StatusReason
from vmsandbox.errors import VMSandboxError
from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.cgroups import CgroupError
from vmsandbox.node_agent import errors
from vmsandbox.node_agent.admission import OutOfCapacity
from vmsandbox.node_agent.network.errors import AddressesExhausted
from vmsandbox.node_agent.policy import RetryPolicy
from vmsandbox.runtime.errors import AgentError, InvalidConfig

PACKAGE = Path(__file__).resolve().parents[2] / "vmsandbox"


def _kinds() -> list[type[errors.SandboxFailure]]:
    found: list[type[errors.SandboxFailure]] = []
    todo: list[type[errors.SandboxFailure]] = [errors.SandboxFailure]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo.extend(kind.__subclasses__())
    return found


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (HypervisorError("no VMM", step="vmm start"), errors.VMBootFailed, StatusReason.VM_BOOT_FAILED),
        (CgroupError("cpuset empty", step="vm cgroup"), errors.VMBootFailed, StatusReason.VM_BOOT_FAILED),
        # A step naming the boot does not make a runtime error a boot failure: its type decides.
        (
            AgentError("refused", step="boot of the container"),
            errors.ContainerCreateFailed,
            "ContainerCreateFailed",
        ),
        (InvalidConfig("bad", step="config.json"), errors.ContainerCreateFailed, "ContainerCreateFailed"),
        (VMSandboxError("other"), errors.ContainerCreateFailed, "ContainerCreateFailed"),
    ],
)
def test_an_error_from_below_is_reported_by_its_type(
    error: VMSandboxError, kind: type[errors.SandboxFailure], reason: str
) -> None:
    failure = errors.as_failure(error)
    assert type(failure) is kind and failure.reason == reason
    assert (failure.step, failure.detail) == (error.step, error.detail), "the user's message is kept"
    assert not failure.permanent


def test_the_agents_own_failures_are_reported_as_they_are() -> None:
    for failure in (errors.ImageNotPresent("not cached"), AddressesExhausted("full")):
        assert errors.as_failure(failure) is failure


def test_every_kind_names_a_reason_and_exactly_the_spec_and_image_ones_are_permanent() -> None:
    kinds = _kinds()
    assert all(isinstance(kind.reason, StatusReason) for kind in kinds), [
        k.__name__ for k in kinds if not isinstance(k.reason, StatusReason)
    ]
    permanent = {kind.__name__ for kind in kinds if kind.permanent}
    assert permanent == {
        "ImageNotPresent",
        "InvalidImage",
        "ImageInvalid",
        "InvalidSpec",
        "HypervisorNotAllowed",
        "ImageNotAllowed",
    }


def test_a_kind_is_permanent_exactly_when_it_has_no_retry_policy() -> None:
    kinds = [*_kinds(), OutOfCapacity]
    assert all(kind.permanent == (kind.retry_policy is None) for kind in kinds)
    with pytest.raises(ValueError, match="first"):
        RetryPolicy(first=0)


def test_no_reason_is_spelt_as_a_string_literal_in_the_agent() -> None:
    """``reason = "..."`` or ``reason="..."`` anywhere in the agent: each belongs in api/reasons.py."""
    spelt = []
    for path in (PACKAGE / "node_agent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            values: list[ast.expr] = []
            if (
                isinstance(node, ast.Assign)
                and any(
                    isinstance(t, (ast.Name, ast.Attribute))
                    and getattr(t, "id", getattr(t, "attr", "")) == "reason"
                    for t in node.targets
                )
            ) or (isinstance(node, ast.keyword) and node.arg == "reason"):
                values = [node.value]
            spelt += [
                f"{path.name}:{v.lineno}"
                for v in values
                if isinstance(v, ast.Constant) and isinstance(v.value, str)
            ]
    assert spelt == []


def _event_reasons(path: Path, position: int) -> list[str]:
    """Literal strings passed as the reason of ``<...>.events.record(...)`` calls in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if node.func.attr != "record" or getattr(owner, "attr", getattr(owner, "id", "")) != "events":
            continue
        reason = node.args[position] if len(node.args) > position else None
        if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
            found.append(f"{path.name}:{node.lineno} {reason.value}")
    return found


def test_no_event_reason_is_spelt_as_a_string_literal() -> None:
    """The agent's recorder takes (obj, reason, message), the operator's (obj, type, reason, message)."""
    spelt = [r for p in (PACKAGE / "node_agent").rglob("*.py") for r in _event_reasons(p, 1)]
    spelt += [r for p in (PACKAGE / "operator").rglob("*.py") for r in _event_reasons(p, 2)]
    assert spelt == []
