"""The OCI runtime: runc-compatible lifecycle of containers that each live in a microVM."""

from vmsandbox.runtime.errors import RuntimeError_
from vmsandbox.runtime.runtime import Runtime
from vmsandbox.runtime.state import ContainerState

__all__ = ["ContainerState", "Runtime", "RuntimeError_"]
