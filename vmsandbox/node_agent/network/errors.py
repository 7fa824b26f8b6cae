"""The one error type of the network plumbing, reported on the sandbox as ``NetworkSetupFailed``."""

from __future__ import annotations

from vmsandbox.api.reasons import StatusReason
from vmsandbox.node_agent.errors import SandboxFailure
from vmsandbox.node_agent.policy import HOST_RESOURCES


class NetworkError(SandboxFailure):
    step = "network"
    reason = StatusReason.NETWORK_SETUP_FAILED


class AddressesExhausted(NetworkError):
    """Every address of the node's sandbox subnet is leased; one frees when a sandbox ends."""

    retry_policy = HOST_RESOURCES
