"""A sandbox's network as the agent sets it up: the spec read again, then the node's plumbing.

The spec was validated at admission, but the agent is root on the node: the mode and every
CIDR are checked again here, where they turn into nftables rules.
"""

from __future__ import annotations

import ipaddress
import time

from vmsandbox.api.network import NetworkMode, NetworkStatus, effective_mode
from vmsandbox.api.resource import VMSandbox
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.node_agent.errors import InvalidSpec
from vmsandbox.node_agent.network.node import NodeNetwork


def checked_cidrs(values: list[str] | None, field: str) -> list[str]:
    out = []
    for index, value in enumerate(values or []):
        try:
            out.append(str(ipaddress.ip_network(value, strict=True)))
        except ValueError as exc:
            raise InvalidSpec(f"{field}[{index}]: {value!r} is not a CIDR ({exc})", step="network") from None
    return out


def attach_sandbox(
    network: NodeNetwork | None, owner: str, sandbox: VMSandbox, hypervisor: str
) -> tuple[NetworkAttachment | None, NetworkStatus | None, float]:
    """The attachment for the runtime, the status to report, and the seconds it took.

    Without a node network (no ``sandboxCIDR``) there is nothing to set up or report.
    """
    if network is None:
        return None, None, 0.0
    spec = sandbox.spec.network
    mode = NetworkMode(effective_mode(spec, sandbox.status.network))
    egress = spec.egress if spec is not None else None
    allow = checked_cidrs(egress.allow if egress else None, "spec.network.egress.allow")
    deny = checked_cidrs(egress.deny if egress else None, "spec.network.egress.deny")
    kind = "netns" if hypervisor == "process" else "tap"
    t0 = time.monotonic()
    attachment = network.attach(owner, mode.value, allow, deny, kind)
    elapsed = time.monotonic() - t0
    if attachment.ip is None:
        return attachment, NetworkStatus(mode=mode), elapsed
    status = NetworkStatus(
        mode=mode,
        ip=attachment.ip,
        prefix_length=attachment.prefix_length,
        mac=attachment.mac,
        gateway=attachment.gateway,
        ip6=attachment.ip6,
        prefix_length6=attachment.prefix_length6 if attachment.ip6 else None,
        gateway6=attachment.gateway6,
        allow=allow or None,
        deny=deny or None,
    )
    return attachment, status, elapsed
