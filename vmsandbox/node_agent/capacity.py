"""What this node offers to sandboxes: CPUs and memory minus the reserve, usable backends, KVM."""

from __future__ import annotations

import os
import shutil
from importlib import metadata

from vmsandbox.api.node import NodeCapacity
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.node_agent.config import AgentConfig


def agent_version() -> str:
    try:
        return metadata.version("vmsandbox")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def memory_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def usable_hypervisors(config: AgentConfig, hv: HypervisorConfig) -> list[str]:
    """The allowed backends whose binaries exist here (cloud-hypervisor also needs KVM in production)."""
    binaries = {"process": "unshare", "cloud-hypervisor": hv.cloud_hypervisor_binary, "qemu": hv.qemu_binary}
    return [name for name in config.allowed_hypervisors if shutil.which(binaries[name])]


def node_capacity(config: AgentConfig, hv: HypervisorConfig) -> NodeCapacity:
    return NodeCapacity(
        vcpus=max(0, (os.cpu_count() or 1) - config.reserve_vcpus),
        memory_mib=max(0, memory_mib() - config.reserve_memory_mib),
        hypervisors=usable_hypervisors(config, hv),
        default_hypervisor=config.default_hypervisor,
        kvm=kvm_usable(),
        agent_version=agent_version(),
        sandbox_cidr=str(config.sandbox_cidr) if config.sandbox_cidr else None,
    )
