"""The VMSandbox custom resource as pydantic models: the single source of truth for the API."""

from vmsandbox.api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION
from vmsandbox.api.network import Egress, NetworkMode, NetworkStatus, SandboxNetwork, effective_mode
from vmsandbox.api.node import NodeCapacity
from vmsandbox.api.resource import InvalidSandbox, ObjectMeta, VMSandbox, parse_sandbox
from vmsandbox.api.spec import (
    EnvVar,
    Hypervisor,
    PullPolicy,
    Resources,
    RestartPolicy,
    Toleration,
    VMSandboxSpec,
)
from vmsandbox.api.status import (
    BootTimings,
    Condition,
    ConditionStatus,
    ConditionType,
    ContainerStatus,
    Phase,
    VMSandboxStatus,
    VMStatus,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "BootTimings",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "ContainerStatus",
    "Egress",
    "EnvVar",
    "Hypervisor",
    "InvalidSandbox",
    "NetworkMode",
    "NetworkStatus",
    "NodeCapacity",
    "ObjectMeta",
    "Phase",
    "PullPolicy",
    "Resources",
    "RestartPolicy",
    "SandboxNetwork",
    "Toleration",
    "VMSandbox",
    "VMSandboxSpec",
    "VMSandboxStatus",
    "VMStatus",
    "effective_mode",
    "parse_sandbox",
]
