"""Addresses on the node's sandbox subnet, leased to sandboxes and kept on disk.

A lease is a file named by the address, created with ``O_EXCL``: the file system decides who
got an address, so no address is handed out twice, not even by two agents racing or by an
agent restarted halfway through a start. The lease records everything the node needs to
rebuild the sandbox's plumbing (mode, rules, link names), which is what reconciliation reads.

With an IPv6 prefix, the lease also holds the sandbox's IPv6 address: the prefix plus the IPv4
address's offset in its subnet (10.250.3.5 on 10.250.3.0/24 is ``<prefix>::5``). The mapping is
one-to-one, so the IPv4 lease's exclusive file makes the IPv6 address exclusive too, in the
same write, and releasing the lease releases both.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsandbox.node_agent.network.errors import AddressesExhausted, NetworkError


def mac_of(ip: str) -> str:
    """Locally administered, derived from the address, so it is stable and unique on the subnet."""
    octets = ipaddress.IPv4Address(ip).packed
    return "02:76:73:" + ":".join(f"{b:02x}" for b in octets[1:])


def link_local_of(mac: str) -> str:
    """The EUI-64 link-local address of ``mac`` (RFC 4291), the one a kernel would make itself.

    Neighbour discovery needs one on each end: a node soliciting a sandbox's MAC for a forwarded
    packet, and a sandbox re-checking the gateway's, send from their link-local address, and
    without one they send nothing (the entry then fails, and with it the traffic).
    """
    hw = bytearray(bytes.fromhex(mac.replace(":", "")))
    hw[0] ^= 0x02
    eui = bytes(hw[:3]) + b"\xff\xfe" + bytes(hw[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\0" * 6 + eui))


class Lease(BaseModel):
    """One sandbox's address and the policy it runs under."""

    model_config = ConfigDict(extra="forbid")

    owner: str
    ip: str = ""
    #: The IPv6 address; empty when the node had no IPv6 prefix when the lease was made.
    ip6: str = ""
    mode: str = "restricted"
    allow: list[str] = []
    deny: list[str] = []
    #: ``netns`` (process backend: a namespace with a veth) or ``tap`` (a VM's NIC).
    kind: str = "tap"

    @property
    def key(self) -> str:
        """Short, stable name part for the sandbox's links, namespace, sets and chains."""
        return hashlib.sha256(self.owner.encode()).hexdigest()[:12]

    @property
    def mac(self) -> str:
        return mac_of(self.ip)


class Ipam:
    """Leases under ``<dir>/<address>``; the first host address of the subnet is the gateway
    (and the same offset in ``prefix6``, the IPv6 gateway)."""

    def __init__(
        self, directory: Path, subnet: ipaddress.IPv4Network, prefix6: ipaddress.IPv6Network | None = None
    ) -> None:
        if subnet.num_addresses < 4:
            raise NetworkError(f"sandbox subnet {subnet} is too small", step="network config")
        if prefix6 is not None and prefix6.num_addresses < subnet.num_addresses:
            raise NetworkError(
                f"IPv6 prefix {prefix6} is smaller than the IPv4 subnet {subnet}", step="network config"
            )
        self.dir = directory
        self.subnet = subnet
        self.prefix6 = prefix6
        hosts = subnet.hosts()
        self.gateway = str(next(hosts))
        self.gateway6 = self.ip6_of(self.gateway)
        self._pool = [str(h) for h in hosts]
        self.dir.mkdir(parents=True, exist_ok=True)

    def ip6_of(self, ip: str) -> str:
        """The IPv6 address paired with ``ip``; empty without a prefix."""
        if self.prefix6 is None:
            return ""
        offset = int(ipaddress.IPv4Address(ip)) - int(self.subnet.network_address)
        return str(self.prefix6.network_address + offset)

    def fits(self, lease: Lease) -> bool:
        """Whether the lease's IPv6 address is the one this prefix pairs with its IPv4 address."""
        return lease.ip6 == self.ip6_of(lease.ip)

    def leases(self) -> list[Lease]:
        out = []
        for path in sorted(self.dir.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                out.append(Lease.model_validate_json(path.read_text()))
            except (OSError, ValueError):
                continue  # a lease whose writer died mid-write: its address stays taken until released
        return out

    def find(self, owner: str) -> Lease | None:
        return next((lease for lease in self.leases() if lease.owner == owner), None)

    def acquire(self, template: Lease) -> Lease:
        """The owner's lease (an existing one is kept as it is), else the lowest free address."""
        existing = self.find(template.owner)
        if existing is not None:
            return existing
        for ip in self._pool:
            path = self.dir / ip
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            lease = template.model_copy(update={"ip": ip, "ip6": self.ip6_of(ip)})
            _write(fd, lease)
            return lease
        raise AddressesExhausted(f"all {len(self._pool)} addresses of {self.subnet} are leased")

    def refit(self, lease: Lease) -> Lease:
        """The lease with the IPv6 address the current prefix pairs with it (none without a
        prefix), rewritten atomically when that changed (the prefix changed across a restart)."""
        if self.fits(lease):
            return lease
        fixed = lease.model_copy(update={"ip6": self.ip6_of(lease.ip)})
        tmp = self.dir / f".{lease.ip}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        _write(fd, fixed)
        os.replace(tmp, self.dir / lease.ip)
        return fixed

    def release(self, lease: Lease) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / lease.ip).unlink()


def _write(fd: int, lease: Lease) -> None:
    with os.fdopen(fd, "w") as out:
        out.write(lease.model_dump_json())
        out.flush()
        os.fsync(out.fileno())
