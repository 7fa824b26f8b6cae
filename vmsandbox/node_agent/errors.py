"""Why a sandbox failed, as the agent reports it: a condition reason plus a message naming the step."""

from __future__ import annotations

from typing import ClassVar

from vmsandbox.api.reasons import StatusReason
from vmsandbox.errors import VMSandboxError
from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.node_agent.policy import HOST_RESOURCES, NODE_BACKOFF, TRANSIENT, RetryPolicy


class SandboxFailure(VMSandboxError):
    """A failure the agent writes to the sandbox's status. Each kind says its ``reason`` and how
    a launch failing this way is retried (``retry_policy``, see
    :class:`~vmsandbox.node_agent.policy.RetryPolicy`); None: retrying cannot help, the spec or
    the image must change first, and ``permanent`` says so."""

    reason: StatusReason = StatusReason.FAILED
    retry_policy: ClassVar[RetryPolicy | None] = NODE_BACKOFF
    permanent: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        """``permanent`` follows ``retry_policy``, so the two never disagree."""
        super().__init_subclass__(**kwargs)
        cls.permanent = cls.retry_policy is None


class VMBootFailed(SandboxFailure):
    """The hypervisor layer could not start the VM or reach its guest agent. Most often the host
    is short of memory or CPUs for it, which another sandbox's end frees: retried later."""

    reason = StatusReason.VM_BOOT_FAILED
    retry_policy = HOST_RESOURCES


class ContainerCreateFailed(SandboxFailure):
    reason = StatusReason.CONTAINER_CREATE_FAILED


class ImagePullFailed(SandboxFailure):
    """A registry or the network failed the pull; that usually passes within seconds: retried soon."""

    step = "image pull"
    reason = StatusReason.IMAGE_PULL_FAILED
    retry_policy = TRANSIENT


class ImageNotPresent(SandboxFailure):
    """``imagePullPolicy: Never`` and the image is not on the node."""

    step = "image pull"
    reason = StatusReason.ERR_IMAGE_NEVER_PULL
    retry_policy = None


class InvalidImage(SandboxFailure):
    """The image cannot run as asked: no command, a user the image does not know, a bad layout."""

    step = "image config"
    reason = StatusReason.INVALID_IMAGE
    retry_policy = None


class BundleFailed(ContainerCreateFailed):
    step = "bundle"


class HypervisorNotAllowed(SandboxFailure):
    step = "hypervisor"
    reason = StatusReason.HYPERVISOR_NOT_ALLOWED
    retry_policy = None


class InvalidSpec(SandboxFailure):
    step = "validation"
    reason = StatusReason.INVALID_SPEC
    retry_policy = None


class ImageNotAllowed(SandboxFailure):
    """An ``oci:`` layout outside the node's ``allowedLayoutDirs``; said the same whether it exists."""

    step = "spec.image"
    reason = StatusReason.IMAGE_NOT_ALLOWED
    retry_policy = None


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
