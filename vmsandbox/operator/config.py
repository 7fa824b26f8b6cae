"""The operator's settings: one validated model, read from a YAML file and ``VMSANDBOX_OPERATOR_*``."""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vmsandbox.api import Hypervisor, NetworkMode
from vmsandbox.errors import VMSandboxError

ENV_PREFIX = "VMSANDBOX_OPERATOR_"


class Strategy(StrEnum):
    """How to choose among the nodes a sandbox fits on."""

    SPREAD = "spread"  # least allocated first: failures hit few sandboxes
    BINPACK = "binpack"  # most allocated first: keeps whole nodes free


class ConfigError(VMSandboxError):
    step = "operator config"


class OperatorConfig(BaseModel):
    """Every knob of the operator; durations in seconds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    namespace: str = Field(
        default="vmsandbox-system", description="Where agent Leases and the leader Lease live."
    )
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    strategy: Strategy = Strategy.SPREAD
    allowed_hypervisors: list[Hypervisor] = Field(
        default_factory=lambda: [Hypervisor.CLOUD_HYPERVISOR],
        description="Hypervisors sandboxes may ask for: cloud-hypervisor unless an admin lists more; "
        "qemu and process (no VM isolation) only when listed.",
    )
    default_network_mode: NetworkMode = Field(
        default=NetworkMode.RESTRICTED,
        description="Network mode of sandboxes whose spec names none; "
        "recorded in status.network at placement.",
    )
    agent_alive_seconds: float = Field(
        default=40.0,
        gt=0,
        description="A node is schedulable while its agent Lease was renewed this recently.",
    )
    node_lost_grace_seconds: float = Field(
        default=60.0,
        gt=0,
        description="After this long without a Lease renewal a node's sandboxes fail with NodeLost.",
    )
    eviction_brake_share: float = Field(
        default=0.55,
        gt=0,
        le=1,
        description=(
            "When more than this share of the nodes heard from lately look lost at once, no sandbox "
            "is marked NodeLost or rescheduled (the API server or the operator is the likelier "
            "fault); 1 turns the brake off."
        ),
    )
    unschedulable_backoff_seconds: float = Field(
        default=1.0, gt=0, description="First retry of an unschedulable sandbox; doubles up to the maximum."
    )
    unschedulable_backoff_max_seconds: float = Field(default=60.0, gt=0)
    leader_election: bool = True
    lease_name: str = "vmsandbox-operator"
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    retry_period_seconds: float = Field(default=2.0, gt=0)
    workers: int = Field(default=64, ge=1, le=256, description="Sandboxes reconciled concurrently.")
    sweep_seconds: float = Field(default=1.0, gt=0, description="How often node loss and TTLs are checked.")
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    metrics_port: int | None = Field(default=9090, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    webhook: bool = Field(default=False, description="Serve the validating admission webhook.")
    webhook_host: str = "0.0.0.0"
    webhook_port: int = Field(default=9443, ge=0, le=65535)
    webhook_certfile: Path | None = None
    webhook_keyfile: Path | None = None
    events: bool = Field(default=True, description="Post a Kubernetes Event for each decision.")

    @model_validator(mode="after")
    def _consistent(self) -> OperatorConfig:
        if self.renew_deadline_seconds >= self.lease_duration_seconds:
            raise ValueError("renewDeadlineSeconds must be shorter than leaseDurationSeconds")
        if self.node_lost_grace_seconds < self.agent_alive_seconds:
            raise ValueError("nodeLostGraceSeconds must not be shorter than agentAliveSeconds")
        return self

    @classmethod
    def load(cls, path: Path | None = None, environ: dict[str, str] | None = None) -> OperatorConfig:
        """File values first, then each ``VMSANDBOX_OPERATOR_<FIELD>`` variable overrides one field."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"cannot read {path}: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping at the top level")
            raw.update({_snake(k): v for k, v in loaded.items()})
        for name in cls.model_fields:
            value = env.get(ENV_PREFIX + name.upper())
            if value is not None:
                raw[name] = yaml.safe_load(value) if name == "allowed_hypervisors" else value
        if isinstance(raw.get("allowed_hypervisors"), str):
            raw["allowed_hypervisors"] = [
                h.strip() for h in raw["allowed_hypervisors"].split(",") if h.strip()
            ]
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(problems) from None


def _snake(key: str) -> str:
    """Accept camelCase keys in the file, as the chart's values use."""
    out = "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in key)
    return out.removeprefix("_").replace("mi_b", "mib")
