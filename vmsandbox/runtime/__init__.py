"""The OCI runtime: runc-compatible lifecycle of containers that each live in a microVM.

Names are loaded on first use, so that a process that needs one small module of the package
(the relay) does not pay for importing the whole runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmsandbox.runtime.errors import RuntimeError_
    from vmsandbox.runtime.runtime import Runtime
    from vmsandbox.runtime.state import ContainerState

__all__ = ["ContainerState", "Runtime", "RuntimeError_"]
_HOMES = {
    "ContainerState": "vmsandbox.runtime.state",
    "Runtime": "vmsandbox.runtime.runtime",
    "RuntimeError_": "vmsandbox.runtime.errors",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
