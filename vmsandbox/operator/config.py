"""The operator's settings: one validated model, read from a YAML file and ``VMSANDBOX_OPERATOR_*``."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vmsandbox.api import Hypervisor, NetworkMode
from vmsandbox.api.timing import AGENT_LEASE_SECONDS, NODE_LOST_GRACE_SECONDS
from vmsandbox.config import ConfigError as SettingsError
from vmsandbox.config import load_settings

ENV_PREFIX = "VMSANDBOX_OPERATOR_"


class Strategy(StrEnum):
    """How to choose among the nodes a sandbox fits on."""

    SPREAD = "spread"  # least allocated first: failures hit few sandboxes
    BINPACK = "binpack"  # most allocated first: keeps whole nodes free


class ConfigError(SettingsError):
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
        default=AGENT_LEASE_SECONDS,
        gt=0,
        description="A node is schedulable while its agent Lease was renewed this recently.",
    )
    node_lost_grace_seconds: float = Field(
        default=NODE_LOST_GRACE_SECONDS,
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
    subresources: bool = Field(
        default=False, description="Serve the aggregated API subresources.vmsandbox.io (exec, files...)."
    )
    subresources_host: str = "0.0.0.0"
    subresources_port: int = Field(default=8443, ge=0, le=65535)
    subresources_certfile: Path | None = None
    subresources_keyfile: Path | None = None
    requestheader_ca_file: Path | None = Field(
        default=None,
        description="CA of the API server's front-proxy client certificate; "
        "default: kube-system/extension-apiserver-authentication.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> OperatorConfig:
        if self.renew_deadline_seconds >= self.lease_duration_seconds:
            raise ValueError("renewDeadlineSeconds must be shorter than leaseDurationSeconds")
        if self.node_lost_grace_seconds < self.agent_alive_seconds:
            raise ValueError("nodeLostGraceSeconds must not be shorter than agentAliveSeconds")
        if self.subresources and not (self.subresources_certfile and self.subresources_keyfile):
            raise ValueError("subresources needs subresourcesCertfile and subresourcesKeyfile")
        return self

    @classmethod
    def load(cls, path: Path | None = None, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """File values first, then each ``VMSANDBOX_OPERATOR_<FIELD>`` variable overrides one field."""
        return load_settings(cls, ENV_PREFIX, path, environ, error=ConfigError)
