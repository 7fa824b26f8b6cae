"""Environment variables that select the emulated version, the guest, and injected faults."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

ENV_VERSION = "CH_STANDIN_VERSION"  # v51.1 (Kata's pin), v52.0, v53.0 (default)
ENV_FAULTS = "CH_STANDIN_FAULTS"  # comma-separated names from FAULTS
ENV_GUEST = "CH_STANDIN_GUEST"  # agent (default) | echo
ENV_RECORD = "CH_STANDIN_RECORD"  # append every request as a JSON line to this file

FAULTS = frozenset(
    {
        "exit-before-ping",  # print an error and exit 1 before the API socket exists
        "never-answer-ping",  # accept API connections but never answer anything
        "refuse-create",  # vm.create answers 500 with an error chain
        "guest-never-accepts",  # boot succeeds but the guest never listens on vsock
        "crash-on-boot",  # vm.boot kills the VMM with SIGSYS, as a seccomp violation does
    }
)
SUPPORTED_VERSIONS = ("v51.1", "v52.0", "v53.0")


@dataclass(frozen=True)
class Knobs:
    version: str = "v53.0"
    faults: frozenset[str] = field(default_factory=frozenset)
    guest: str = "agent"
    record: str | None = None

    @property
    def major(self) -> int:
        return int(self.version[1:].split(".")[0])

    @property
    def not_created_status(self) -> int:
        """v53 maps VmNotCreated / VmMissingConfig to 404; earlier releases say 500."""
        return 404 if self.major >= 53 else 500

    @property
    def emits_nulls(self) -> bool:
        """Releases up to v52 serialised unset optional response fields as null."""
        return self.major <= 52

    @property
    def locks_api_socket(self) -> bool:
        """v53 locks ``<socket>.lock`` and replaces a stale socket; earlier ones fail to bind."""
        return self.major >= 53

    @classmethod
    def from_env(cls) -> Knobs:
        version = os.environ.get(ENV_VERSION, "v53.0")
        if version not in SUPPORTED_VERSIONS or not re.fullmatch(r"v\d+\.\d+", version):
            raise SystemExit(f"{ENV_VERSION}={version!r}: expected one of {', '.join(SUPPORTED_VERSIONS)}")
        faults = frozenset(f for f in os.environ.get(ENV_FAULTS, "").replace(" ", "").split(",") if f)
        unknown = faults - FAULTS
        if unknown:
            raise SystemExit(f"{ENV_FAULTS}: unknown fault(s) {sorted(unknown)}; known: {sorted(FAULTS)}")
        guest = os.environ.get(ENV_GUEST, "agent")
        if guest not in ("agent", "echo"):
            raise SystemExit(f"{ENV_GUEST}={guest!r}: expected agent or echo")
        return cls(version=version, faults=faults, guest=guest, record=os.environ.get(ENV_RECORD) or None)
