"""Why a sandbox failed, as the agent reports it: a condition reason plus a message naming the step."""

from __future__ import annotations

from vmsandbox.api.reasons import StatusReason
from vmsandbox.errors import VMSandboxError
from vmsandbox.hypervisor.base import HypervisorError


class SandboxFailure(VMSandboxError):
    """A failure the agent writes to the sandbox's status. Each kind says its ``reason`` and
    whether retrying can help (``permanent``: the spec or the image must change first)."""

    reason: StatusReason = StatusReason.FAILED
    permanent: bool = False


class VMBootFailed(SandboxFailure):
    """The hypervisor layer could not start the VM or reach its guest agent."""

    reason = StatusReason.VM_BOOT_FAILED


class ContainerCreateFailed(SandboxFailure):
    reason = StatusReason.CONTAINER_CREATE_FAILED


class ImagePullFailed(SandboxFailure):
    step = "image pull"
    reason = StatusReason.IMAGE_PULL_FAILED


class ImageNotPresent(SandboxFailure):
    """``imagePullPolicy: Never`` and the image is not on the node."""

    step = "image pull"
    reason = StatusReason.ERR_IMAGE_NEVER_PULL
    permanent = True


class InvalidImage(SandboxFailure):
    """The image cannot run as asked: no command, a user the image does not know, a bad layout."""

    step = "image config"
    reason = StatusReason.INVALID_IMAGE
    permanent = True


class BundleFailed(ContainerCreateFailed):
    step = "bundle"


class HypervisorNotAllowed(SandboxFailure):
    step = "hypervisor"
    reason = StatusReason.HYPERVISOR_NOT_ALLOWED
    permanent = True


class InvalidSpec(SandboxFailure):
    step = "validation"
    reason = StatusReason.INVALID_SPEC
    permanent = True


class ImageNotAllowed(SandboxFailure):
    """An ``oci:`` layout outside the node's ``allowedLayoutDirs``; said the same whether it exists."""

    step = "spec.image"
    reason = StatusReason.IMAGE_NOT_ALLOWED
    permanent = True


class ImageInvalid(InvalidImage):
    """The image breaks a rule the agent checks before trusting it (a path, a digest, a file)."""

    reason = StatusReason.IMAGE_INVALID


def as_failure(exc: VMSandboxError) -> SandboxFailure:
    """What a launch's error reports, chosen by its type: the agent's own kinds as they are, the
    hypervisor layer's as a VM boot failure, anything else below as a container create failure."""
    if isinstance(exc, SandboxFailure):
        return exc
    kind = VMBootFailed if isinstance(exc, HypervisorError) else ContainerCreateFailed
    return kind(exc.detail, step=exc.step)
