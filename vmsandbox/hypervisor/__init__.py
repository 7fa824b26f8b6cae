"""Hypervisor drivers: Cloud Hypervisor (production), QEMU (no usable KVM), process (no VM)."""

from __future__ import annotations

import importlib
from typing import get_args

from vmsandbox.hypervisor.base import HypervisorDriver, HypervisorError, HypervisorName
from vmsandbox.hypervisor.config import HypervisorConfig

#: Drivers are imported lazily: each pulls in its own dependencies.
_DRIVERS: dict[str, str] = {
    "cloud-hypervisor": "vmsandbox.hypervisor.cloud_hypervisor:CloudHypervisorDriver",
    "qemu": "vmsandbox.hypervisor.qemu:QemuDriver",
    "process": "vmsandbox.hypervisor.process:ProcessDriver",
}

HYPERVISORS: tuple[str, ...] = get_args(HypervisorName)


def driver_for(name: str, config: HypervisorConfig | None = None) -> HypervisorDriver:
    """The driver called ``name``, configured from ``config`` (or the environment)."""
    if name not in _DRIVERS:
        raise HypervisorError(
            f"unknown hypervisor {name!r}; expected one of {', '.join(HYPERVISORS)}", step="hypervisor"
        )
    module_name, _, class_name = _DRIVERS[name].partition(":")
    driver_cls = getattr(importlib.import_module(module_name), class_name)
    driver: HypervisorDriver = driver_cls(config or HypervisorConfig.load())
    return driver


__all__ = ["HYPERVISORS", "HypervisorConfig", "HypervisorDriver", "HypervisorError", "driver_for"]
