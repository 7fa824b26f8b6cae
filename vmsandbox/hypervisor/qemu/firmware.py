"""The firmware QEMU runs before the guest kernel.

The driver always boots a kernel directly (``-kernel``/``-initrd``), so the firmware only has to
hand over to it. QEMU's default, SeaBIOS, also sets up a PC's worth of boot services first; qboot,
shipped in QEMU's data files, does only the direct kernel boot (the kernel assigns the PCI
resources itself, hot-plug ports included). Under TCG that is a measurable share of a cold boot.
"""

from __future__ import annotations

from pathlib import Path

from vmsandbox.hypervisor.base import HypervisorError

#: Where Debian's qemu-system-data (and QEMU's own install) put qboot.
QBOOT = Path("/usr/share/qemu/qboot.rom")
#: ``qemu_firmware`` values besides a path: qboot when present, or QEMU's own default.
AUTO = "auto"
DEFAULT = "default"


def firmware_for(setting: str) -> str:
    """The ``-bios`` file the ``qemu_firmware`` setting (or a snapshot's record of it) names; ""
    for QEMU's default firmware, which "" also names."""
    if setting == AUTO:
        return str(QBOOT) if QBOOT.is_file() else ""
    if setting in (DEFAULT, ""):
        return ""
    path = Path(setting)
    if not path.is_absolute() or not path.is_file():
        raise HypervisorError(
            f"qemu_firmware: {setting!r} is neither {AUTO!r}, {DEFAULT!r} nor an absolute path to a file",
            step="boot config",
        )
    return setting
