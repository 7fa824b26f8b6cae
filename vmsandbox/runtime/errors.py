"""Typed errors of the OCI runtime; each names the create/start/... step that failed."""

from __future__ import annotations

from vmsandbox.errors import VMSandboxError


class RuntimeError_(VMSandboxError):
    """Any runtime failure a caller can act on."""

    step = "runtime"


class InvalidId(RuntimeError_):
    step = "container id"


class IdInUse(RuntimeError_):
    step = "container id"


class NotFound(RuntimeError_):
    step = "container id"


class InvalidBundle(RuntimeError_):
    step = "bundle"


class InvalidConfig(RuntimeError_):
    """config.json is unreadable or a field has an invalid value; the step names the field."""

    step = "config.json"


class WrongState(RuntimeError_):
    """The operation is not valid for the container's current status."""


class AgentError(RuntimeError_):
    """The guest agent refused a request or could not be reached."""

    step = "guest agent"


class InjectedFault(RuntimeError_):
    """A failure forced at a named create step (``VMSANDBOX_RUNTIME_FAIL_AT``) to test rollback."""


class BadPath(RuntimeError_):
    """A path (or archive) for a file transfer inside a container was refused: missing, not a
    file or directory, or leading nowhere; the user's to fix."""

    step = "path"
