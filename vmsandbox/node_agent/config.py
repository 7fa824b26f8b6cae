"""The agent's configuration: one YAML file and/or ``VMSANDBOX_AGENT_*`` variables, checked at start-up.

Precedence, lowest first: defaults, the YAML file, the environment. ``NODE_NAME`` and
``POD_NAMESPACE`` (the DaemonSet's downward API) fill ``nodeName`` and ``namespace`` unless
set otherwise. List values in the environment are comma-separated (see :mod:`vmsandbox.config`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from vmsandbox.api.base import APIModel
from vmsandbox.api.timing import AGENT_LEASE_RENEW_SECONDS, AGENT_LEASE_SECONDS, NODE_LOST_GRACE_SECONDS
from vmsandbox.config import ConfigError as ConfigError
from vmsandbox.config import load_settings
from vmsandbox.hypervisor.base import HypervisorName
from vmsandbox.runtime.logfiles import LogLimits

ENV_PREFIX = "VMSANDBOX_AGENT_"
HYPERVISOR_NAMES: tuple[str, ...] = get_args(HypervisorName)
#: Only Cloud Hypervisor by default: QEMU must be enabled on purpose (and under TCG emulation
#: also with allowTCG), and the process backend is isolated by namespaces only.
DEFAULT_ALLOWED: tuple[HypervisorName, ...] = ("cloud-hypervisor",)
#: ``host`` or ``host:port``, as image references spell a registry.
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?$")


class AgentConfig(APIModel):
    """Every option of ``vmsandbox-agent``; see the README for what each one is for."""

    node_name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str = Field(default="vmsandbox-system", min_length=1, max_length=63)
    state_dir: Path = Path("/var/lib/vmsandbox")
    runtime_root: Path = Path("/run/vmsandbox")
    default_hypervisor: HypervisorName = "cloud-hypervisor"
    allowed_hypervisors: list[HypervisorName] = Field(default_factory=lambda: list(DEFAULT_ALLOWED))
    guest_image_dir: Path | None = None
    #: QEMU without KVM runs under TCG emulation, which is not a security boundary.
    allow_tcg: bool = Field(default=False, alias="allowTCG")
    reserve_vcpus: int = Field(default=1, ge=0)
    reserve_memory_mib: int = Field(default=1024, ge=0, alias="reserveMemoryMiB")
    #: What the node offers to sandboxes, instead of its CPUs and memory minus the reserve
    #: (e.g. to overcommit vCPUs on purpose). The agent never starts more than this.
    capacity_vcpus: int | None = Field(default=None, ge=0)
    capacity_memory_mib: int | None = Field(default=None, ge=0, alias="capacityMemoryMiB")
    image_cache_limit_mib: int = Field(default=10240, ge=64, alias="imageCacheLimitMiB")
    insecure_registries: list[str] = Field(default_factory=list)
    #: Directories whose OCI layouts sandboxes may name as ``oci:<path>``; none by default.
    allowed_layout_dirs: list[Path] = Field(default_factory=list)
    #: Size at which a sandbox's container and serial logs are rotated, and how many files are kept.
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    log_max_files: int = Field(default=2, ge=1, le=10)
    listen_address: str = "0.0.0.0"
    port: int = Field(default=8081, ge=0, le=65535)
    advertise_address: str | None = None
    lease_duration_seconds: int = Field(default=AGENT_LEASE_SECONDS, ge=1)
    lease_renew_seconds: float = Field(default=AGENT_LEASE_RENEW_SECONDS, gt=0)
    orphan_grace_seconds: float = Field(default=60.0, ge=0)
    node_lost_grace_seconds: float = Field(
        default=NODE_LOST_GRACE_SECONDS,
        ge=0,
        description="The operator's nodeLostGraceSeconds: cut off from the API server this long "
        "(less one lease renewal), the agent stops its OnFailure/Always sandboxes, which the "
        "operator then runs elsewhere (fencing); 0 turns fencing off.",
    )
    restart_backoff_seconds: float = Field(default=10.0, gt=0)
    restart_backoff_max_seconds: float = Field(default=300.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=5)
    max_concurrent_starts: int = Field(default=8, ge=1)
    watch_timeout_seconds: int = Field(default=300, ge=1)
    #: How often the pools are listed to keep this node's members (claims also wake it).
    pool_sync_seconds: float = Field(default=2.0, gt=0, le=60)
    sandbox_cidr: ipaddress.IPv4Network | None = Field(
        default=None,
        alias="sandboxCIDR",
        description="The node's sandbox subnet (e.g. 10.250.3.0/24); unset: sandboxes get no network.",
    )
    sandbox_cidr6: ipaddress.IPv6Network | Literal["none"] | None = Field(
        default=None,
        alias="sandboxCIDR6",
        description="The node's IPv6 sandbox prefix, a ULA (fc00::/7) of length 48 to 112; unset: "
        "derived from sandboxCIDR (fd76:7362:<its 32 bits>::/64); none: sandboxes get IPv4 only.",
    )
    sandbox_bridge: str = Field(default="vmsb0", pattern=r"^[a-z][a-z0-9]{0,9}$")
    sandbox_dns: list[str] = Field(
        default_factory=list,
        alias="sandboxDNS",
        description="Resolvers sandboxes may reach; empty: the node's own (non-loopback) resolvers.",
    )
    network_namespace: Path | None = Field(
        default=None, description="Run the sandbox network's plumbing in this namespace (dev, tests)."
    )
    vmm_overhead_mib: int = Field(
        default=256,
        ge=0,
        alias="vmmOverheadMiB",
        description="Memory each VM's cgroup allows beyond the guest's: the VMM, its relay and mux.",
    )
    vmm_user: str | None = Field(
        default=None,
        alias="vmmUser",
        description="The user VMMs run as: a name or uid:gid, or root; unset: VMSANDBOX_VMM_USER, "
        "else vmsandbox-vmm when that user exists, else root.",
    )
    vmm_cgroup_parent: str = Field(
        default="vmsandbox.slice",
        pattern=r"^([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$",
        description="Each VM runs in the cgroup <this>/<container id>, outside the agent's; empty: "
        "in the agent's own (then a restart of the agent's container stops its VMs).",
    )
    kubeconfig: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    model_config = {**APIModel.model_config, "extra": "forbid"}

    @field_validator("insecure_registries")
    @classmethod
    def _registries(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if not _REGISTRY.match(r)]
        if bad:
            raise ValueError(f"not a registry host[:port]: {', '.join(bad)}")
        return value

    @field_validator("sandbox_cidr")
    @classmethod
    def _subnet_size(cls, value: ipaddress.IPv4Network | None) -> ipaddress.IPv4Network | None:
        if value is not None and not 16 <= value.prefixlen <= 29:
            raise ValueError(f"{value}: the prefix length must be between 16 and 29")
        return value

    @field_validator("sandbox_cidr6")
    @classmethod
    def _prefix6(cls, value: ipaddress.IPv6Network | str | None) -> ipaddress.IPv6Network | str | None:
        if isinstance(value, ipaddress.IPv6Network):
            if not value.subnet_of(ipaddress.IPv6Network("fc00::/7")):
                raise ValueError(f"{value}: must be a unique local (fc00::/7) prefix")
            if not 48 <= value.prefixlen <= 112:
                raise ValueError(f"{value}: the prefix length must be between 48 and 112")
        return value

    @field_validator("sandbox_dns")
    @classmethod
    def _resolvers(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.IPv4Address(v)) for v in value]

    @field_validator("state_dir", "runtime_root", "guest_image_dir", "network_namespace")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path")
        return value

    @field_validator("allowed_layout_dirs")
    @classmethod
    def _layout_dirs(cls, value: list[Path]) -> list[Path]:
        bad = [str(p) for p in value if not p.is_absolute() or ".." in p.parts]
        if bad:
            raise ValueError(f"must be absolute paths without '..': {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        inside = [str(p) for p in self.allowed_layout_dirs if p.is_relative_to(self.state_dir)]
        if inside:
            raise ValueError(
                f"allowedLayoutDirs {', '.join(inside)} lie in stateDir {self.state_dir}: "
                "the image cache is never a layout source"
            )
        if not self.allowed_hypervisors:
            raise ValueError("allowedHypervisors must name at least one hypervisor")
        if self.default_hypervisor not in self.allowed_hypervisors:
            raise ValueError(
                f"defaultHypervisor {self.default_hypervisor!r} is not in allowedHypervisors "
                f"{self.allowed_hypervisors}"
            )
        if self.restart_backoff_max_seconds < self.restart_backoff_seconds:
            raise ValueError("restartBackoffMaxSeconds must be >= restartBackoffSeconds")
        if self.lease_renew_seconds >= self.lease_duration_seconds:
            raise ValueError("leaseRenewSeconds must be shorter than leaseDurationSeconds")
        return self

    def log_limits(self) -> LogLimits:
        return LogLimits(max_bytes=self.log_max_bytes, max_files=self.log_max_files)

    def registry_insecure(self, registry: str) -> bool:
        return registry in self.insecure_registries


#: The downward API's variables, read before ``VMSANDBOX_AGENT_*``.
DOWNWARD_API = {"NODE_NAME": "node_name", "POD_NAMESPACE": "namespace"}


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, merge and validate; raises :class:`ConfigError` naming each bad option."""
    return load_settings(AgentConfig, ENV_PREFIX, path, environ, also=DOWNWARD_API)
