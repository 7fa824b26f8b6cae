"""Response bodies of the Cloud Hypervisor API that the driver reads.

They ignore fields they do not know and tolerate ``null`` where releases up to v52 emitted it
(v53 started omitting unset fields instead).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

VmState = Literal["Created", "Running", "Shutdown", "Paused", "BreakPoint"]


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VmmPingResponse(_Response):
    version: str
    build_version: str | None = None
    pid: int | None = None
    features: list[str] | None = None


class VmInfo(_Response):
    state: VmState
    config: dict[str, Any]
    memory_actual_size: int | None = None
    device_tree: dict[str, Any] | None = None


class PciDeviceInfo(_Response):
    """Where a hot-plugged device landed: its VMM id and guest PCI address."""

    id: str
    bdf: str


#: ``vm.counters``: device id -> counter name -> value.
VmCounters = dict[str, dict[str, int]]
