"""The node agent's settings for pools of QEMU guests under TCG (no KVM on the test machines)."""

from __future__ import annotations

from pathlib import Path


def qemu_pool_agent_env(image: Path, pool_sync_seconds: int) -> dict[str, str]:
    """QEMU by default, from the guest image in ``image``; ``process`` stays allowed beside it."""
    return {
        "VMSANDBOX_AGENT_ALLOWED_HYPERVISORS": "qemu,process",
        "VMSANDBOX_AGENT_DEFAULT_HYPERVISOR": "qemu",
        "VMSANDBOX_AGENT_ALLOW_TCG": "true",
        "VMSANDBOX_AGENT_GUEST_IMAGE_DIR": str(image),
        "VMSANDBOX_AGENT_POOL_SYNC_SECONDS": str(pool_sync_seconds),
    }
