"""The network interface a VM (or the process backend's agent) is given, as the node prepared it.

The node agent creates the host side (a tap on its bridge, or a network namespace holding a
veth) before the VM boots; the driver only plugs it in and tells the guest its address.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Kernel command-line key the guest image's init reads: ``vmsandbox.net=IP/PREFIX,GATEWAY,DNS[+DNS]``.
KERNEL_ARG = "vmsandbox.net"
#: The IPv6 address and default route, when the node gives one: ``vmsandbox.net6=IP6/PREFIX,GATEWAY6``.
KERNEL_ARG6 = "vmsandbox.net6"
_MAC = r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$"
_IFNAME = r"^[A-Za-z0-9_.-]{1,15}$"


class NetworkAttachment(BaseModel):
    """One interface (``tap`` for a VM, a veth in ``netns`` for the process backend): an IPv4
    address, and an IPv6 one (``ip6``) when the node has an IPv6 sandbox prefix.

    Without ``ip`` the sandbox has no network at all (mode ``none``): a VM gets no NIC, the
    process backend's agent still gets a namespace of its own, holding only loopback.
    """

    model_config = ConfigDict(extra="forbid")

    ip: str | None = None
    prefix_length: int = Field(default=24, ge=1, le=30)
    gateway: str | None = None
    mac: str | None = Field(default=None, pattern=_MAC)
    dns: list[str] = Field(default_factory=list)
    ip6: str | None = None
    prefix_length6: int = Field(default=64, ge=48, le=120)
    gateway6: str | None = None
    tap: str | None = Field(default=None, pattern=_IFNAME)
    netns: Path | None = None
    #: The network namespace holding ``tap``, when it is not the VMM's own (the node agent's
    #: ``networkNamespace``): the VMM must open the tap from there, or it makes a new one here.
    tap_netns: Path | None = None

    @field_validator("ip", "gateway")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.IPv4Address(value))

    @field_validator("ip6", "gateway6")
    @classmethod
    def _ipv6(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.IPv6Address(value))

    @field_validator("dns")
    @classmethod
    def _resolvers(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(v)) for v in value]

    def kernel_arg(self) -> str:
        """What the guest's init needs, in one token without spaces."""
        return f"{KERNEL_ARG}={self.ip}/{self.prefix_length},{self.gateway},{'+'.join(self.dns)}"

    def kernel_args(self) -> list[str]:
        """:meth:`kernel_arg`, and the IPv6 one when there is an IPv6 address; none without ``ip``."""
        if self.ip is None:
            return []
        args = [self.kernel_arg()]
        if self.ip6 is not None and self.gateway6 is not None:
            args.append(f"{KERNEL_ARG6}={self.ip6}/{self.prefix_length6},{self.gateway6}")
        return args
