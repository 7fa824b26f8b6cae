"""Failure injection for rollback tests: ``VMSANDBOX_RUNTIME_FAIL_AT=<step>`` fails that step,
``VMSANDBOX_RUNTIME_KILL_AT=<step>`` SIGKILLs the creating process there (as an OOM kill or a
node agent's container restart would), leaving its work for :meth:`Runtime.sweep`.

Read on every checkpoint, so one process can run many creates failing at different steps.
"""

from __future__ import annotations

import os
import signal

from vmsandbox.runtime.errors import InjectedFault

FAIL_AT_ENV = "VMSANDBOX_RUNTIME_FAIL_AT"
KILL_AT_ENV = "VMSANDBOX_RUNTIME_KILL_AT"

#: Every checkpoint ``create`` passes, in order (the pod-container path skips "boot").
CREATE_STEPS = (
    "reserve",
    "bundle",
    "config",
    "container-type",
    "disk",
    "boot",
    "create-sandbox",
    "create-container",
    "console",
    "relay",
    "state",
    "pid-file",
)
#: Passed only by a create that hot-plugs the sandbox's NIC (a networked claim of a pool member
#: or a snapshot's copy), between the hot-plug and the guest configuring it.
NIC_STEP = "nic"


def checkpoint(step: str) -> None:
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(FAIL_AT_ENV) == step:
        raise InjectedFault(f"failure injected by {FAIL_AT_ENV}={step}", step=step)
