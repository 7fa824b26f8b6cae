"""Open a VM's tap as root, then exec the rest of the command line holding it as fd 3.

QEMU running as the VMM user cannot always open ``/dev/net/tun`` (nodes may keep it 0600) and
must not need ``CAP_NET_ADMIN`` to attach a tap; so this opens the tap by name (in the namespace
it is started in) and execs ``setpriv ... qemu -netdev tap,fd=3``: the pid stays the VMM's.

``tapfd.py --send NAME FD`` instead sends the open tap over the unix socket ``FD`` (SCM_RIGHTS)
and exits: a NIC hot-plugged into a running VM (see vmsandbox.hypervisor.taps), whose VMM may
run in another network namespace than the tap's.
Run as a script (standard library only), never imported by the package.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys

TAP_FD = 3
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    request = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as exc:
        sys.exit(f"cannot attach to tap {name}: {exc}")
    return fd


def send(name: str, sock_fd: int) -> None:
    fd = open_tap(name)
    with socket.socket(fileno=sock_fd) as sock:
        socket.send_fds(sock, [b"tap"], [fd])


def main(argv: list[str]) -> None:
    if argv[0] == "--send":
        send(argv[1], int(argv[2]))
        return
    name, command = argv[0], argv[1:]
    fd = open_tap(name)
    if fd != TAP_FD:
        os.dup2(fd, TAP_FD)
        os.close(fd)
    os.set_inheritable(TAP_FD, True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
