"""A claimed VM's own identity: fresh entropy credited to the kernel's pool, and the host's clock.

A pool member booted ahead of its claim carries whatever random state and clock it had at boot;
two members booted alike (or restored from one snapshot) would otherwise draw the same bytes.
Standard library only: this runs in the guest agent.
"""

from __future__ import annotations

import binascii
import fcntl
import struct
import time

from vmsandbox.errors import VMSandboxError

#: ``_IOW('R', 0x03, int[2])`` from <linux/random.h>: add bytes to the pool and credit them.
RNDADDENTROPY = 0x40085203
RANDOM_DEVICE = "/dev/random"
#: More than this is refused: the host sends 64 bytes, the pool holds 256.
MAX_ENTROPY = 4096


class IdentityError(VMSandboxError):
    step = "guest identity"


def add_entropy(encoded: str, device: str = RANDOM_DEVICE) -> int:
    """Mix the base64 ``encoded`` bytes into the kernel's pool, credited in full; returns the byte count."""
    try:
        seed = binascii.a2b_base64(encoded, strict_mode=True)  # as the wire does: no base64 module
    except ValueError as exc:
        raise IdentityError(f"entropy is not base64: {exc}") from None
    if not 0 < len(seed) <= MAX_ENTROPY:
        raise IdentityError(f"entropy must be 1 to {MAX_ENTROPY} bytes, got {len(seed)}")
    seed += b"\0" * (-len(seed) % 4)  # the buffer is a __u32 array
    info = struct.pack("ii", len(seed) * 8, len(seed)) + seed
    try:
        with open(device, "wb") as pool:
            fcntl.ioctl(pool.fileno(), RNDADDENTROPY, info)
    except OSError as exc:
        raise IdentityError(f"RNDADDENTROPY on {device}: {exc}") from None
    return len(seed)


def set_clock(epoch_seconds: float) -> None:
    """Set the guest's wall clock (CLOCK_REALTIME) to the host's."""
    try:
        time.clock_settime(time.CLOCK_REALTIME, epoch_seconds)
    except OSError as exc:
        raise IdentityError(f"setting the clock: {exc}") from None
