"""A sandbox NIC hot-plugged over QMP: the tap's descriptor, a tap netdev on it, virtio-net.

The same ids as a cold boot's NIC (``-netdev tap,id=net0`` and ``virtio-net-pci,id=nic0``), on a
free hot-plug root port. QEMU gets the tap only as a descriptor (``getfd``, SCM_RIGHTS): it runs
as the VMM user, maybe in another network namespace than the tap's.
"""

from __future__ import annotations

import contextlib

from vmsandbox.hypervisor.qemu.qmp import QMPClient, QMPError, remove_device

NETDEV_ID = "net0"
NIC_ID = "nic0"
FD_NAME = "tap-net0"


def plug(qmp: QMPClient, tap_fd: int, mac: str, bus: str) -> None:
    """``getfd``, ``netdev_add`` and ``device_add``; on failure, whatever was added goes again."""
    qmp.execute("getfd", {"fdname": FD_NAME}, fd=tap_fd)
    try:
        # netdev_add takes the named descriptor over (QEMU drops the name once it uses it).
        qmp.execute("netdev_add", {"type": "tap", "id": NETDEV_ID, "fd": FD_NAME})
    except QMPError:
        _quietly(qmp, "closefd", {"fdname": FD_NAME})
        raise
    try:
        qmp.execute(
            "device_add",
            {"driver": "virtio-net-pci", "netdev": NETDEV_ID, "mac": mac, "id": NIC_ID, "bus": bus},
        )
    except QMPError:
        _quietly(qmp, "netdev_del", {"id": NETDEV_ID})
        raise


def unplug(qmp: QMPClient, timeout: float) -> None:
    """The NIC removed once the guest released it (:func:`remove_device`), then ``netdev_del``;
    idempotent."""
    remove_device(qmp, NIC_ID, timeout, "its NIC", "detach nic")
    _quietly(qmp, "netdev_del", {"id": NETDEV_ID})
    _quietly(qmp, "closefd", {"fdname": FD_NAME})


def _quietly(qmp: QMPClient, command: str, arguments: dict[str, str]) -> None:
    """A cleanup command whose failure means there was nothing to clean."""
    with contextlib.suppress(QMPError):
        qmp.execute(command, arguments)
