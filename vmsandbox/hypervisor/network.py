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
_MAC = r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$"
_IFNAME = r"^[A-Za-z0-9_.-]{1,15}$"


class NetworkAttachment(BaseModel):
    """One IPv4 interface (``tap`` for a VM, a veth in ``netns`` for the process backend).

    Without ``ip`` the sandbox has no network at all (mode ``none``): a VM gets no NIC, the
    process backend's agent still gets a namespace of its own, holding only loopback.
    """

    model_config = ConfigDict(extra="forbid")

    ip: str | None = None
    prefix_length: int = Field(default=24, ge=1, le=30)
    gateway: str | None = None
    mac: str | None = Field(default=None, pattern=_MAC)
    dns: list[str] = Field(default_factory=list)
    tap: str | None = Field(default=None, pattern=_IFNAME)
    netns: Path | None = None
    #: The network namespace holding ``tap``, when it is not the VMM's own (the node agent's
    #: ``networkNamespace``): the VMM must open the tap from there, or it makes a new one here.
    tap_netns: Path | None = None

    @field_validator("ip", "gateway")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.IPv4Address(value))

    @field_validator("dns")
    @classmethod
    def _resolvers(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(v)) for v in value]

    def kernel_arg(self) -> str:
        """What the guest's init needs, in one token without spaces."""
        return f"{KERNEL_ARG}={self.ip}/{self.prefix_length},{self.gateway},{'+'.join(self.dns)}"
