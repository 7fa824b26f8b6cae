"""Why a sandbox failed, as the agent reports it: a condition reason plus a message naming the step."""

from __future__ import annotations

from vmsandbox.api import reasons
from vmsandbox.errors import VMSandboxError


class SandboxFailure(VMSandboxError):
    """A failure the agent writes to the sandbox's status: ``reason`` is the CamelCase word."""

    reason = "Failed"

    def __init__(self, detail: str, *, step: str | None = None, reason: str | None = None) -> None:
        super().__init__(detail, step=step)
        if reason is not None:
            self.reason = reason


class ImagePullFailed(SandboxFailure):
    step = "image pull"
    reason = "ImagePullFailed"


class ImageNotPresent(SandboxFailure):
    """``imagePullPolicy: Never`` and the image is not on the node."""

    step = "image pull"
    reason = "ErrImageNeverPull"


class InvalidImage(SandboxFailure):
    """The image cannot run as asked: no command, a user the image does not know, a bad layout."""

    step = "image config"
    reason = "InvalidImage"


class BundleFailed(SandboxFailure):
    step = "bundle"
    reason = "ContainerCreateFailed"


class HypervisorNotAllowed(SandboxFailure):
    step = "hypervisor"
    reason = "HypervisorNotAllowed"


class InvalidSpec(SandboxFailure):
    step = "validation"
    reason = "InvalidSpec"


class ImageNotAllowed(SandboxFailure):
    """An ``oci:`` layout outside the node's ``allowedLayoutDirs``; said the same whether it exists."""

    step = "spec.image"
    reason = reasons.IMAGE_NOT_ALLOWED


class ImageInvalid(InvalidImage):
    """The image breaks a rule the agent checks before trusting it (a path, a digest, a file)."""

    reason = reasons.IMAGE_INVALID
