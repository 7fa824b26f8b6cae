"""The size of a pod sandbox's VM, read from the sandbox bundle's annotations.

Kata sizes the VM from ``io.katacontainers.config.hypervisor.*`` annotations; these are ours.
They are read at create's config step, so a bad value fails before anything is booted.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError

from vmsandbox.runtime.errors import InvalidConfig

ANNOTATION_VCPUS = "io.vmsandbox.vm.vcpus"
ANNOTATION_MEMORY_MIB = "io.vmsandbox.vm.memory-mib"


class VMSize(BaseModel):
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=512, ge=128, le=262144)


_FIELDS = {ANNOTATION_VCPUS: "vcpus", ANNOTATION_MEMORY_MIB: "memory_mib"}


def vm_size(annotations: dict[str, str]) -> VMSize:
    raw = {field: annotations[key] for key, field in _FIELDS.items() if key in annotations}
    try:
        return VMSize.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = next(k for k, f in _FIELDS.items() if f == err["loc"][0])
        step = f"config.json: annotations.{key}"
        raise InvalidConfig(f"{err['input']!r}: {err['msg']}", step=step) from None
