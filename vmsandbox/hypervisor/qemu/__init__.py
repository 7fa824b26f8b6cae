"""QEMU backend: boots the guest image where KVM is missing or unusable (TCG), driven over QMP."""
