"""What this node offers to sandboxes: CPUs and memory minus the reserve, usable backends, KVM."""

from __future__ import annotations

import os
import shutil
from importlib import metadata

from vmsandbox.api.node import NodeCapacity
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.qemu.probe import kvm_verdict
from vmsandbox.node_agent.config import AgentConfig
from vmsandbox.node_agent.network.startup import sandbox_prefix6


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


def _qemu_emulated(hv: HypervisorConfig) -> str | None:
    """Why QEMU would run under TCG emulation here (as the driver decides), or None under KVM."""
    if hv.qemu_accel == "kvm":
        return None
    if hv.qemu_accel == "tcg":
        return "VMSANDBOX_QEMU_ACCEL=tcg"
    verdict = kvm_verdict(hv.qemu_binary, hv.guest_image_dir / "vmlinuz")
    return None if verdict.usable else f"KVM unusable: {verdict.reason}"


def hypervisor_refusals(config: AgentConfig, hv: HypervisorConfig) -> dict[str, str]:
    """Why each allowed backend cannot take sandboxes on this node; a backend absent here can."""
    binaries = {"process": "unshare", "cloud-hypervisor": hv.cloud_hypervisor_binary, "qemu": hv.qemu_binary}
    refusals: dict[str, str] = {}
    for name in config.allowed_hypervisors:
        if not shutil.which(binaries[name]):
            refusals[name] = f"{binaries[name]} is not installed"
        elif name == "qemu" and not config.allow_tcg and (why := _qemu_emulated(hv)) is not None:
            refusals[name] = (
                f"qemu would run under TCG emulation ({why}), which is not a security boundary; "
                "the agent allows that only with allowTCG: true"
            )
    return refusals


def usable_hypervisors(config: AgentConfig, hv: HypervisorConfig) -> list[str]:
    """The allowed backends this node can run (cloud-hypervisor also needs KVM in production)."""
    refused = hypervisor_refusals(config, hv)
    return [name for name in config.allowed_hypervisors if name not in refused]


def node_capacity(config: AgentConfig, hv: HypervisorConfig) -> NodeCapacity:
    return NodeCapacity(
        vcpus=(
            config.capacity_vcpus
            if config.capacity_vcpus is not None
            else max(0, (os.cpu_count() or 1) - config.reserve_vcpus)
        ),
        memory_mib=(
            config.capacity_memory_mib
            if config.capacity_memory_mib is not None
            else max(0, memory_mib() - config.reserve_memory_mib)
        ),
        hypervisors=usable_hypervisors(config, hv),
        default_hypervisor=config.default_hypervisor,
        kvm=kvm_usable(),
        agent_version=agent_version(),
        sandbox_cidr=str(config.sandbox_cidr) if config.sandbox_cidr else None,
        sandbox_cidr6=str(prefix6) if (prefix6 := sandbox_prefix6(config)) else None,
    )
