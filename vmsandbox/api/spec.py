"""The desired state of a VMSandbox: what to run, how big its VM is, where it may go."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, JsonValue, StringConstraints

from vmsandbox.api.base import APIModel
from vmsandbox.api.constants import RESERVED_ANNOTATION_PREFIXES
from vmsandbox.api.image_ref import IMAGE_PATTERN


class PullPolicy(StrEnum):
    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"
    NEVER = "Never"


class Hypervisor(StrEnum):
    CLOUD_HYPERVISOR = "cloud-hypervisor"
    QEMU = "qemu"
    PROCESS = "process"


class RestartPolicy(StrEnum):
    NEVER = "Never"
    ON_FAILURE = "OnFailure"
    ALWAYS = "Always"


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


#: ``NAME=value`` for the container; a C identifier, as the OCI runtime tools require.
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]


class EnvVar(APIModel):
    name: EnvName
    value: str = ""


class Resources(APIModel):
    """The VM's size; the container gets all of it."""

    vcpus: int = Field(default=1, ge=1, le=64, description="Virtual CPUs of the sandbox's VM.")
    memory_mib: int = Field(
        default=512, ge=128, le=262144, alias="memoryMiB", description="Memory of the sandbox's VM in MiB."
    )


class Toleration(APIModel):
    """The Kubernetes toleration shape; matched against node taints when scheduling."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = None
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None

    def tolerates(self, key: str, value: str | None, effect: str) -> bool:
        if self.effect is not None and self.effect.value != effect:
            return False
        if self.key is None:  # an empty key with Exists tolerates everything
            return self.operator is TolerationOperator.EXISTS
        if self.key != key:
            return False
        return self.operator is TolerationOperator.EXISTS or (self.value or "") == (value or "")


def _reserved_cel(var: str) -> str:
    return " || ".join(f"{var}.startsWith('{prefix}')" for prefix in RESERVED_ANNOTATION_PREFIXES)


#: The CRD refuses reserved annotation keys already; admission and the agent check again.
ANNOTATION_VALIDATIONS: list[JsonValue] = [
    {
        "rule": f"self.all(k, !({_reserved_cel('k')}))",
        "message": "keys starting with " + ", ".join(RESERVED_ANNOTATION_PREFIXES) + " are reserved",
        "messageExpression": "'spec.annotations[\"' + self.filter(k, "
        + _reserved_cel("k")
        + ")[0] + '\"]: the prefix is reserved for the runtime'",
    }
]
MAX_ANNOTATIONS = 64


IMMUTABLE = "is immutable: a changed sandbox is a new sandbox; delete and recreate it"


class VMSandboxSpec(APIModel):
    image: Annotated[str, StringConstraints(pattern=IMAGE_PATTERN, min_length=1, max_length=4096)] = Field(
        description="OCI image reference ([registry/]repo[:tag][@sha256:digest]) or oci:<path>[:tag] "
        "for an image layout already on the node.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"image {IMMUTABLE}"}]
        },
    )
    image_pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    command: list[str] | None = Field(default=None, description="Overrides the image's entrypoint.")
    args: list[str] | None = Field(default=None, description="Overrides the image's cmd.")
    env: list[EnvVar] | None = None
    working_dir: Annotated[str, StringConstraints(pattern=r"^/")] | None = Field(
        default=None, description="Absolute path in the container; overrides the image's."
    )
    resources: Resources = Field(
        default_factory=Resources,
        json_schema_extra={
            "default": {},
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"resources {IMMUTABLE}"}],
        },
    )
    hypervisor: Hypervisor | None = Field(
        default=None, description="Backend for this sandbox's VM; the node's default when absent."
    )
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    active_deadline_seconds: int | None = Field(default=None, ge=0)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    annotations: dict[str, str] | None = Field(
        default=None,
        max_length=MAX_ANNOTATIONS,
        description="Copied into the container's OCI config.json; reserved prefixes are refused.",
        json_schema_extra={"x-kubernetes-validations": ANNOTATION_VALIDATIONS},
    )


#: Rules on the spec as a whole: "immutable once set" needs both old and new objects.
SPEC_VALIDATIONS = [
    {
        "rule": "!has(oldSelf.hypervisor) || (has(self.hypervisor) && self.hypervisor == oldSelf.hypervisor)",
        "message": f"hypervisor {IMMUTABLE}",
    }
]
