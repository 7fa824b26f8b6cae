"""Stops the stand-in's guest agent when the stand-in dies (its pipe on stdin breaks).

Arguments: the stand-in's work directory and the guest's state directory (where the process
backend saved ``handle.json``). Both are removed once the agent is stopped. A stand-in that
stops its guest itself writes ``q`` before closing the pipe, and nothing is done.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main() -> int:
    workdir, state_dir = Path(sys.argv[1]), Path(sys.argv[2])
    received = b""
    while chunk := sys.stdin.buffer.read(4096):
        received += chunk
    if received.endswith(b"q"):  # the stand-in stopped its guest itself
        return 0
    if (state_dir / "handle.json").exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
        from vmsandbox.hypervisor.base import VMHandle
        from vmsandbox.hypervisor.config import HypervisorConfig
        from vmsandbox.hypervisor.process import ProcessDriver

        ProcessDriver(HypervisorConfig.load()).stop(VMHandle.load(state_dir))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
