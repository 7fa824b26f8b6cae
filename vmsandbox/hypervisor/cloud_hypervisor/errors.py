"""Typed failures of the Cloud Hypervisor driver, each naming the stage that failed.

Every message is composed here, once, from the facts the raiser hands over (the endpoint, the
status, the server's own error chain, the VMM's exit status), so that the CLI, the resource
status and the logs all say the same thing.
"""

from __future__ import annotations

import signal

from vmsandbox.hypervisor.base import HypervisorError, VMGone


def describe_exit(returncode: int | None) -> str:
    """Human words for a child's exit status (negative means killed by a signal)."""
    if returncode is None:
        return "exit status unknown (the VMM is not a child of this process)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


class CloudHypervisorError(HypervisorError):
    """Anything the Cloud Hypervisor driver could not do."""

    step = "cloud-hypervisor"


class VmmLaunchError(CloudHypervisorError):
    """The VMM binary could not be started at all."""

    def __init__(self, binary: str, reason: str) -> None:
        super().__init__(f"cannot start {binary!r}: {reason}", step="cloud-hypervisor launch")
        self.binary = binary


class VmmExited(CloudHypervisorError):
    """The VMM process ended while the driver still needed it."""

    def __init__(self, stage: str, pid: int, returncode: int | None, log_tail: str = "") -> None:
        detail = f"VMM process {pid} {describe_exit(returncode)}"
        if log_tail:
            detail += f"; last lines of its log:\n{log_tail}"
        super().__init__(detail, step=stage)
        self.pid = pid
        self.returncode = returncode


class VmmNotReady(CloudHypervisorError):
    """The API socket never answered ``vmm.ping`` within the deadline."""

    def __init__(self, api_socket: str, timeout: float, last_error: str, log_tail: str = "") -> None:
        detail = (
            f"the VMM API at {api_socket} did not answer vmm.ping within {timeout:g} s "
            f"(last error: {last_error})"
        )
        if log_tail:
            detail += f"; last lines of its log:\n{log_tail}"
        super().__init__(detail, step="cloud-hypervisor vmm.ping")


class ApiUnreachable(CloudHypervisorError):
    """An API call could not be delivered or timed out (no HTTP status)."""

    def __init__(self, method: str, endpoint: str, reason: str) -> None:
        super().__init__(f"{method} {endpoint} failed: {reason}", step=f"cloud-hypervisor {endpoint}")
        self.endpoint = endpoint


class ApiError(CloudHypervisorError):
    """The VMM answered with a non-2xx status; ``messages`` is its error chain, top to root."""

    def __init__(self, method: str, endpoint: str, status: int, messages: list[str]) -> None:
        words = ": ".join(messages) if messages else "(empty body)"
        detail = f"{method} {endpoint} answered {status}: {words}"
        super().__init__(detail, step=f"cloud-hypervisor {endpoint}")
        self.endpoint = endpoint
        self.status = status
        self.messages = messages


class ApiProtocolError(CloudHypervisorError):
    """The VMM answered 2xx with a body the driver cannot read."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"unexpected answer: {reason}", step=f"cloud-hypervisor {endpoint}")


class UnexpectedVmState(CloudHypervisorError):
    """``vm.info`` reported a state other than the one the previous call should have produced."""

    def __init__(self, after: str, expected: str, actual: str) -> None:
        super().__init__(
            f"after {after} the VM should be {expected}, but vm.info reports {actual}",
            step=f"cloud-hypervisor {after}",
        )


class AgentUnreachable(CloudHypervisorError):
    """The guest agent never accepted a hybrid-vsock connection within the deadline."""

    def __init__(self, vsock_socket: str, port: int, timeout: float, last_error: str) -> None:
        super().__init__(
            f"the guest agent did not accept CONNECT {port} on {vsock_socket} within {timeout:g} s "
            f"(last attempt: {last_error})",
            step="guest agent connect",
        )


class VmmDied(VMGone):
    """The VMM of a booted VM is gone: the VM failed."""

    def __init__(self, vm_id: str, pid: int, returncode: int | None) -> None:
        super().__init__(f"VM {vm_id!r} failed: VMM process {pid} {describe_exit(returncode)}", step="vm")
        self.pid = pid
        self.returncode = returncode
