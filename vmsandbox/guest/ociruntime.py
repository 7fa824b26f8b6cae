"""The low-level OCI runtime (crun or runc) the agent drives, and the choice between them.

``auto`` prefers crun (smaller, faster) and falls back to runc on the first create crun
cannot do, logging crun's own words: Debian 12's crun 1.8.1 refuses hosts that mount cgroup v1
beside a cgroup2 hierarchy with controllers ("cgroups in hybrid mode not supported"), which is
what the process backend sees on such hosts; inside our own guest crun works.
"""

from __future__ import annotations

import os
import threading

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.logs import log

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    RuntimeChoice = Literal["auto", "crun", "runc"]


class OciRuntimeError(VMSandboxError):
    step = "oci runtime"


def hybrid_cgroups() -> str | None:
    """Why crun 1.8 would refuse this machine, or None: cgroup v1 beside a cgroup2 with controllers.

    Checking up front saves every new agent a doomed crun attempt; the fallback on an actual
    crun failure stays in place for anything this misses.
    """
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
            mounts = [line.split() for line in mountinfo]
    except OSError:
        return None
    v1 = any(m[m.index("-") + 1] == "cgroup" for m in mounts if "-" in m)
    for m in mounts:
        if "-" not in m or m[m.index("-") + 1] != "cgroup2" or not v1:
            continue
        try:
            with open(os.path.join(m[4], "cgroup.controllers"), encoding="utf-8") as file:
                controllers = file.read().split()
        except OSError:
            continue
        if controllers:
            return (
                f"cgroup v1 is mounted beside a cgroup2 hierarchy at {m[4]} with controllers "
                f"{' '.join(controllers)}; crun refuses such hybrid hosts"
            )
    return None


def _which(name: str) -> str | None:
    """The executable ``name`` on PATH, as ``shutil.which`` finds it; shutil (with the compression
    modules it imports) would cost the first container's create a noticeable share under emulation."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class OciRuntime:
    """One low-level runtime binary with its own state root."""

    def __init__(self, name: str, state_root: str) -> None:
        binary = _which(name)
        if binary is None:
            raise OciRuntimeError(f"{name} is not installed in the guest", step=f"{name}")
        self.name = name
        self.binary = binary
        self.state_root = os.path.join(state_root, name)
        os.makedirs(self.state_root, exist_ok=True)

    def base(self) -> list[str]:
        """The command's start. Every path given to crun/runc is absolute: the agent works
        relative to its state directory, and crun resolves some paths (``--pid-file``) after
        changing into the bundle."""
        return [self.binary, "--root", os.path.abspath(self.state_root)]

    def run(self, *args: str, step: str) -> None:
        """Run a quick subcommand (start, delete, kill); raise with its output on failure."""
        from vmsandbox.guest import spawn  # off the agent's start path, like the container machinery

        code, output = spawn.run([*self.base(), *args])
        if code != 0:
            msg = output.strip() or f"exit status {code}"
            raise OciRuntimeError(f"{self.name} {args[0]}: {msg}", step=step)


class RuntimeSelector:
    """Hands out the runtime to use; under ``auto`` remembers a fallback to runc once made."""

    def __init__(self, choice: RuntimeChoice, state_root: str) -> None:
        self.choice = choice
        self.state_root = state_root
        self._lock = threading.Lock()
        self._fell_back = False
        self._probed = False

    def current(self) -> OciRuntime:
        with self._lock:
            if self.choice == "runc" or self._fell_back:
                return OciRuntime("runc", self.state_root)
            if self.choice == "crun":
                return OciRuntime("crun", self.state_root)
            if _which("crun") is None:
                self._fall_back("crun is not installed")
                return OciRuntime("runc", self.state_root)
            if not self._probed:
                self._probed = True
                reason = hybrid_cgroups()
                if reason is not None and _which("runc") is not None:
                    self._fall_back(reason)
                    return OciRuntime("runc", self.state_root)
            return OciRuntime("crun", self.state_root)

    def can_fall_back(self, used: OciRuntime) -> bool:
        return self.choice == "auto" and used.name == "crun" and _which("runc") is not None

    def fall_back(self, reason: str) -> None:
        with self._lock:
            self._fall_back(reason)

    def _fall_back(self, reason: str) -> None:
        if not self._fell_back:
            log.warning("oci runtime auto: using runc instead of crun: %s", reason)
        self._fell_back = True

    def describe(self) -> str:
        if self.choice != "auto":
            return self.choice
        return "auto(runc)" if self._fell_back else "auto(crun)"
