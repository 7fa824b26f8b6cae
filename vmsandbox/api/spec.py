"""The desired state of a VMSandbox: what to run, how big its VM is, where it may go."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, JsonValue, StrictBool, StringConstraints

from vmsandbox.api.base import APIModel
from vmsandbox.api.constants import RESERVED_ANNOTATION_PREFIXES
from vmsandbox.api.image_ref import IMAGE_PATTERN
from vmsandbox.api.network import SandboxNetwork


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


#: A DNS-1123 label: the name of an object in the same namespace (a VMSandboxPool).
DNS1123Label = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", min_length=1, max_length=63)
]

#: ``NAME=value`` for the container; a C identifier, as the OCI runtime tools require.
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]


class EnvVar(APIModel):
    """One environment variable of the container."""

    name: EnvName = Field(
        description="Variable name: a C identifier (letters, digits and underscores, not starting with "
        "a digit)."
    )
    value: str = Field(default="", description="Value, used verbatim (no $(VAR) expansion).")


class Resources(APIModel):
    """The VM's size; the container gets all of it."""

    vcpus: int = Field(default=1, ge=1, le=64, description="Virtual CPUs of the sandbox's VM.")
    memory_mib: int = Field(
        default=512,
        ge=128,
        le=262144,
        alias="memoryMiB",
        description="Memory of the sandbox's VM, in MiB (mebibytes).",
    )


class Toleration(APIModel):
    """The Kubernetes toleration shape; matched against node taints when scheduling."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = Field(
        default=None,
        description="Taint key to match, a label key; empty with operator Exists matches every taint.",
    )
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL,
        description="Exists matches any value of the key; Equal matches only the given value.",
    )
    value: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Taint value to match with operator Equal; must be empty with Exists."
    )
    effect: TaintEffect | None = Field(
        default=None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="Accepted with effect NoExecute only, as for Pods; it has no effect, because a taint "
        "added later never evicts a running sandbox.",
    )

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
    """What to run in the sandbox's microVM, how big the VM is, and where it may run."""

    image: Annotated[str, StringConstraints(pattern=IMAGE_PATTERN, min_length=1, max_length=4096)] = Field(
        description="The container image: [registry/]repo[:tag][@sha256:digest] (docker.io and tag "
        "latest when left out), or oci:<absolute path>[:tag] for an OCI image layout already on the node. "
        "Immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"image {IMMUTABLE}"}]
        },
    )
    image_pull_policy: PullPolicy = Field(
        default=PullPolicy.IF_NOT_PRESENT,
        description="When the node agent pulls the image: IfNotPresent uses the node's cached copy if "
        "there is one, Always pulls at every start (restarts included), Never uses only the cache and "
        "fails with ErrImageNeverPull without it. Ignored for oci: layouts, which are read in place.",
    )
    command: list[str] | None = Field(
        default=None,
        description="Replaces the image's Entrypoint; when set, the image's Cmd is dropped too, so only "
        "args follow it. Absent: the image's Entrypoint.",
    )
    args: list[str] | None = Field(
        default=None,
        description="Replaces the image's Cmd, the arguments after the entrypoint or command. "
        "Absent: the image's Cmd.",
    )
    env: list[EnvVar] | None = Field(
        default=None,
        description="Environment variables of the container, overriding the image's by name. PATH and "
        "HOSTNAME (the sandbox's name) are set when neither the image nor the spec sets them.",
    )
    working_dir: Annotated[str, StringConstraints(pattern=r"^/")] | None = Field(
        default=None,
        description="Absolute path the container's process starts in. Absent: the image's WorkingDir, "
        "else /.",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="Size of the sandbox's VM; the container gets all of it, and the scheduler counts it "
        "against the node's published capacity. Immutable.",
        json_schema_extra={
            "default": {},
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"resources {IMMUTABLE}"}],
        },
    )
    hypervisor: Hypervisor | None = Field(
        default=None,
        description="Backend that runs the VM: cloud-hypervisor, qemu, or process (a plain process with "
        "no VM isolation, for development). Absent: the chosen node's default, recorded in "
        "status.hypervisor. The operator rejects a backend it does not allow; immutable once set.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        description="Labels the sandbox's node must carry, each with exactly this value, as for Pods. "
        "Keys and values must be valid label syntax.",
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        description="Node taints the sandbox tolerates, as for Pods. A node with an untolerated NoSchedule "
        "or NoExecute taint is never chosen; PreferNoSchedule taints are ignored.",
    )
    restart_policy: RestartPolicy = Field(
        default=RestartPolicy.NEVER,
        description="What follows the container's exit: Never leaves the sandbox finished, OnFailure "
        "restarts it after a non-zero exit or a lost VM, Always after every exit; both also retry a failed "
        "start and reschedule a sandbox whose node was lost. Restarts back off from 10 s, doubling to "
        "5 min (node agent settings).",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Seconds the sandbox may run, counted from status.startTime across restarts; past it "
        "the node agent stops the VM and the sandbox fails with reason DeadlineExceeded, without restart. "
        "Absent: no limit.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Seconds after the sandbox finished (Succeeded or Failed) before the operator deletes "
        "it. Absent: kept until deleted. May be changed at any time.",
    )
    annotations: dict[str, str] | None = Field(
        default=None,
        max_length=MAX_ANNOTATIONS,
        description="Copied into the container's OCI config.json annotations (e.g. container-type "
        "annotations). Keys with a reserved prefix (io.kubernetes., io.vmsandbox., io.katacontainers., "
        "io.containerd., run.oci., org.systemd., nri.) are refused: the node agent sets those itself.",
        json_schema_extra={"x-kubernetes-validations": ANNOTATION_VALIDATIONS},
    )
    network: SandboxNetwork | None = Field(
        default=None, description="The sandbox's network: mode and egress rules."
    )
    pool: DNS1123Label | None = Field(
        default=None,
        description="A VMSandboxPool in the same namespace to claim a ready VM from. Served warm when "
        "the pool's template has the sandbox's resources, hypervisor and network mode and a member is "
        "ready on its node; otherwise the sandbox starts cold, never waits, and its WarmStart condition "
        "says why. Immutable.",
    )
    paused: StrictBool = Field(
        default=False,
        description="Pause the running sandbox's VM (true) or let it run (false); may be changed at any "
        "time. A paused VM keeps its memory, processes and network state but executes nothing: phase "
        "Paused, condition Paused. Its container cannot exit, so restartPolicy has nothing to act on; "
        "activeDeadlineSeconds keeps counting, and a paused sandbox past it is stopped and fails as "
        "usual. A sandbox created paused boots and starts first, then pauses.",
    )


#: Rules on the spec as a whole: "immutable once set" needs both old and new objects.
SPEC_VALIDATIONS = [
    {
        "rule": "!has(oldSelf.hypervisor) || (has(self.hypervisor) && self.hypervisor == oldSelf.hypervisor)",
        "message": f"hypervisor {IMMUTABLE}",
    },
    {
        "rule": "has(self.network) == has(oldSelf.network)"
        " && (!has(self.network) || self.network == oldSelf.network)",
        "message": f"network {IMMUTABLE}",
    },
    {
        "rule": "has(self.pool) == has(oldSelf.pool) && (!has(self.pool) || self.pool == oldSelf.pool)",
        "message": f"pool {IMMUTABLE}",
    },
]
