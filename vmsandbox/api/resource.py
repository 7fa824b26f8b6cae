"""A whole VMSandbox object as stored by the API server, and the one way to parse one."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from pydantic import Field, ValidationError

from vmsandbox.api.base import APIModel
from vmsandbox.api.constants import API_VERSION, KIND
from vmsandbox.api.spec import VMSandboxSpec
from vmsandbox.api.status import VMSandboxStatus
from vmsandbox.errors import VMSandboxError

T = TypeVar("T", bound=APIModel)


class ObjectMeta(APIModel):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    finalizers: list[str] | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class NamespacedObject(APIModel):
    """What every object of the API group has besides its spec and status.

    apiVersion, kind and metadata are described by the API server itself (TypeMeta, ObjectMeta).
    """

    api_version: str = API_VERSION
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @property
    def ref(self) -> str:
        """``namespace/name``, the form every log line and message uses (and a pool's key in the
        agents' Node annotation)."""
        return f"{self.metadata.namespace}/{self.metadata.name}"


class VMSandbox(NamespacedObject):
    """A container run in its own microVM, placed on a node by the operator and run by that node's agent."""

    kind: str = KIND
    spec: VMSandboxSpec = Field(description="What to run and where; written by the sandbox's author.")
    status: VMSandboxStatus = Field(
        default_factory=VMSandboxStatus,
        description="What the operator and the node agents observed. They write it through the status "
        "subresource; status sent with the object itself is ignored.",
    )


class InvalidSandbox(VMSandboxError):
    """A sandbox whose spec breaks a rule; each problem names its field path."""

    step = "validation"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))

    @property
    def field(self) -> str:
        return self.problems[0][0] if self.problems else ""


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_object(model: type[T], obj: Mapping[str, Any], invalid: type[InvalidSandbox]) -> T:
    """``obj`` as ``model``; raises ``invalid`` naming every offending field."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise invalid([(_path(err["loc"]), err["msg"]) for err in exc.errors()]) from None


def parse_sandbox(obj: Mapping[str, Any]) -> VMSandbox:
    """Validate a raw object; raises :class:`InvalidSandbox` naming every offending field."""
    return validate_object(VMSandbox, obj, InvalidSandbox)
