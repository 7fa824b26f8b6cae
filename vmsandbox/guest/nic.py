"""Configure a NIC hot-plugged into a running VM, as the guest's init does for a cold boot's eth0.

A pool member or a snapshot's copy boots without a NIC; its sandbox's NIC is hot-plugged at the
claim, and this gives it the sandbox's addresses, routes and resolvers (init.sh's
``configure_network`` and ``configure_ipv6``, with the values from :class:`ConfigureNetwork`
instead of the kernel command line). It runs the image's busybox ``ip``. Standard library only:
this runs in the guest agent, imported when the request first comes.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.etcfiles import replace_file

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmsandbox.guest.protocol import ConfigureNetwork

    Run = Callable[[list[str]], None]

SYS_NET = "/sys/class/net"
PROC_IPV6 = "/proc/sys/net/ipv6/conf"
RESOLV_CONF = "/etc/resolv.conf"
IP = ["busybox", "ip"]
#: What init.sh sets before an IPv6 address goes on: the node hands out the addresses, so no
#: router advertisements, autoconfiguration or duplicate address detection (which would delay).
IPV6_SETTINGS = {"accept_ra": "0", "autoconf": "0", "accept_dad": "0", "dad_transmits": "0"}


class NicError(VMSandboxError):
    step = "guest network"


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NicError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit status {done.returncode}'}")


def find_interface(mac: str, timeout: float, sys_net: str = SYS_NET) -> str:
    """The name of the interface with ``mac``, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        for name in sorted(os.listdir(sys_net)):
            try:
                with open(f"{sys_net}/{name}/address") as f:
                    if f.read().strip().lower() == mac:
                        return name
            except OSError:
                continue
        if time.monotonic() >= deadline:
            raise NicError(f"no interface with MAC {mac} appeared within {timeout:g}s")
        time.sleep(0.05)


def check_gateways(req: ConfigureNetwork) -> None:
    """Each gateway must be on its address's subnet, or the default route cannot be added."""
    pairs = [("ip", req.ip, req.prefix_length, "gateway", req.gateway)]
    if req.ip6 is not None and req.gateway6 is not None:
        pairs.append(("ip6", req.ip6, req.prefix_length6, "gateway6", req.gateway6))
    for field, ip, prefix, gateway_field, gateway in pairs:
        subnet = ipaddress.ip_interface(f"{ip}/{prefix}").network
        if ipaddress.ip_address(gateway) not in subnet:
            raise NicError(f"ConfigureNetwork.{gateway_field}: {gateway} is not on {field}'s subnet {subnet}")


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise NicError(f"cannot set {path}: {exc}") from None


def configure(
    req: ConfigureNetwork,
    *,
    run: Run = _run,
    sys_net: str = SYS_NET,
    proc_ipv6: str = PROC_IPV6,
    resolv_conf: str = RESOLV_CONF,
) -> str:
    """Configure the interface ``req.mac`` names; returns its name."""
    check_gateways(req)
    name = find_interface(req.mac, req.timeout, sys_net)
    conf = f"{proc_ipv6}/{name}"
    run([*IP, "addr", "add", f"{req.ip}/{req.prefix_length}", "dev", name])
    if req.ip6 is None:
        if os.access(f"{conf}/disable_ipv6", os.W_OK):  # as at boot: no IPv6 the node did not give
            _write(f"{conf}/disable_ipv6", "1")
    else:
        if not os.access(f"{conf}/disable_ipv6", os.W_OK):
            raise NicError("ConfigureNetwork.ip6 is set but the guest kernel has no IPv6")
        for setting, value in IPV6_SETTINGS.items():
            _write(f"{conf}/{setting}", value)
        run([*IP, "-6", "addr", "add", f"{req.ip6}/{req.prefix_length6}", "dev", name])
    run([*IP, "link", "set", name, "up"])
    run([*IP, "route", "replace", "default", "via", req.gateway, "dev", name])
    if req.gateway6 is not None:
        run([*IP, "-6", "route", "replace", "default", "via", req.gateway6, "dev", name])
    if req.dns:
        replace_file(resolv_conf, "".join(f"nameserver {server}\n" for server in req.dns))
    return name
