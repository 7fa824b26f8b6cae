"""A sandbox's network: the mode and egress rules a tenant asks for, and what the node put in force.

Every CIDR is parsed with :mod:`ipaddress` in strict form (no host bits), so a rule means exactly
what it says; the node agent parses them again before it writes any nftables rule.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from vmsandbox.api.base import APIModel

#: Most rules one list may hold: each becomes a set element on the node.
MAX_RULES = 64


class NetworkMode(StrEnum):
    NONE = "none"
    RESTRICTED = "restricted"
    OPEN = "open"


#: When neither the spec nor the operator's placement names a mode.
DEFAULT_MODE = NetworkMode.RESTRICTED


def _cidr(value: str) -> str:
    """The canonical text of an IPv4 or IPv6 network; host bits set are an error, not a guess."""
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 CIDR ({exc})") from None


CIDR = Annotated[
    str,
    StringConstraints(max_length=49, pattern=r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"),
    AfterValidator(_cidr),
]


class Egress(APIModel):
    """Exceptions to the mode, by destination network."""

    allow: list[CIDR] | None = Field(
        default=None,
        max_length=MAX_RULES,
        description="Destination networks reachable even though restricted mode blocks them "
        '(e.g. ["10.99.0.2/32"]). IPv4 or IPv6 CIDRs without host bits.',
    )
    deny: list[CIDR] | None = Field(
        default=None,
        max_length=MAX_RULES,
        description="Destination networks never reachable, in restricted and open mode; "
        "deny wins over allow.",
    )


class SandboxNetwork(APIModel):
    """Whether and where the sandbox may connect; the sandbox is never reachable from outside its node."""

    mode: NetworkMode | None = Field(
        default=None,
        description="none: no interface but loopback. restricted: the internet only; private, "
        "shared (100.64/10), link-local and metadata (169.254/16), loopback, multicast, the node's "
        "own addresses and their IPv6 equivalents are blocked. open: everything the node reaches. "
        "When absent, the cluster's default (restricted unless the operator is configured otherwise).",
    )
    egress: Egress | None = Field(default=None, description="Allow and deny rules on top of the mode.")

    @model_validator(mode="after")
    def _egress_needs_a_network(self) -> SandboxNetwork:
        rules = self.egress and (self.egress.allow or self.egress.deny)
        if self.mode is NetworkMode.NONE and rules:
            raise ValueError("egress rules need a network: mode is none")
        return self


class NetworkStatus(APIModel):
    """The sandbox's interface as the node configured it, and the policy in force."""

    mode: NetworkMode | None = Field(default=None, description="The mode in force.")
    ip: str | None = Field(default=None, description="The sandbox's address on its node's sandbox subnet.")
    prefix_length: int | None = Field(
        default=None, ge=0, le=128, description="Length of that subnet's prefix."
    )
    mac: str | None = Field(default=None, description="MAC address of the sandbox's interface.")
    gateway: str | None = Field(default=None, description="The node's address on the sandbox subnet.")
    ip6: str | None = Field(
        default=None, description="The sandbox's IPv6 address on its node's IPv6 sandbox prefix (a ULA)."
    )
    prefix_length6: int | None = Field(default=None, ge=0, le=128, description="Length of that prefix.")
    gateway6: str | None = Field(default=None, description="The node's address on the IPv6 sandbox prefix.")
    allow: list[str] | None = Field(default=None, description="Allow rules in force.")
    deny: list[str] | None = Field(default=None, description="Deny rules in force.")


def effective_mode(network: SandboxNetwork | None, placed: NetworkStatus | None) -> NetworkMode:
    """The spec's mode, else the one the operator recorded at placement, else the default."""
    if network is not None and network.mode is not None:
        return network.mode
    if placed is not None and placed.mode is not None:
        return placed.mode
    return DEFAULT_MODE
