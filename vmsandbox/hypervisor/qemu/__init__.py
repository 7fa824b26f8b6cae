"""QEMU backend: boots the guest image where KVM is missing or unusable (TCG), driven over QMP."""

from vmsandbox.hypervisor.qemu.driver import QemuDriver

__all__ = ["QemuDriver"]
