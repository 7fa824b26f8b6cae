"""The one error type the image builder raises."""

from __future__ import annotations

from vmsandbox.errors import VMSandboxError


class GuestImageError(VMSandboxError):
    """A build step failed; the message names the step so CI logs point at the cause."""

    step = "guest-image"

    def __str__(self) -> str:
        return f"step '{self.step}' failed: {self.detail}"
