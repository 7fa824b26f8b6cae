"""``python3 -m vmsandbox.guest serve --listen SPEC --state-dir DIR [--oci-runtime ...]``."""

from __future__ import annotations

import _signal
import os
import sys

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest import logs
from vmsandbox.guest.agent import Agent
from vmsandbox.guest.logs import log
from vmsandbox.guest.transport import open_listener

# The start path imports neither typing, pathlib, ctypes nor logging, and not the socket, signal,
# json or base64 modules either (their C cores serve, without enum and re): under emulation each
# costs the boot a noticeable share of the agent's start (tests/runtime/test_wire.py holds it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

    from vmsandbox.guest.ociruntime import RuntimeChoice

READY_LINE = "vmsandbox-guest: ready"
PR_SET_CHILD_SUBREAPER = 36
KMSG = "/dev/kmsg"
UPTIME = "/proc/uptime"
#: What PID 1 execs when the agent ends: the VM stops, and the host sees why on the console.
POWER_OFF = ("/bin/busybox", "poweroff", "-f")


def _become_subreaper() -> None:
    """Orphaned container inits (their runc parent exits after create) come back to us.

    Run before the first container, not at start: ctypes is a costly import. A VM's agent is
    PID 1, which every orphan comes back to anyway, so it needs neither."""
    if os.getpid() == 1:
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        log.warning("cannot become a child subreaper")


def _announce(listen: str) -> None:
    print(READY_LINE, flush=True)
    # In a VM the console may be quiet; the kernel log always reaches the host's serial log.
    # A unix listener means the agent runs on a host, whose kernel log is not ours to write.
    if not listen.startswith("unix:") and os.path.exists(KMSG):
        try:
            with open(KMSG, "w", encoding="utf-8") as kmsg:
                kmsg.write(READY_LINE + "\n")
        except OSError:
            pass


def _uptime() -> float | None:
    """Seconds since the (guest) kernel started, the clock init's own timestamps use."""
    try:
        with open(UPTIME, encoding="ascii") as uptime:
            return float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


USAGE = """usage: python3 -m vmsandbox.guest serve --listen SPEC --state-dir DIR
       [--oci-runtime auto|crun|runc] [--log-level LEVEL] [--init-uptime SECONDS]

  --listen        unix:PATH | vsock:PORT | serial:PATH | auto
  --state-dir     the agent's working directory (bundles, runtime state)
  --oci-runtime   the low-level runtime (default: auto, crun falling back to runc)
  --log-level     DEBUG, INFO (default), WARNING, ERROR
  --init-uptime   guest uptime (s) when init began; given, the pong reports it and the agent's own"""
OCI_RUNTIMES = ("auto", "crun", "runc")


class UsageError(VMSandboxError):
    step = "usage"


class ServeArgs:
    """The ``serve`` options (parsed by hand: argparse alone is a fifth of the start-up imports)."""

    def __init__(self, argv: list[str]) -> None:
        if not argv or argv[0] != "serve":
            raise UsageError("the only command is 'serve'")
        values: dict[str, str] = {"--oci-runtime": "auto", "--log-level": "INFO"}
        rest = argv[1:]
        while rest:
            option, eq, value = rest.pop(0).partition("=")
            if option not in ("--listen", "--state-dir", "--oci-runtime", "--log-level", "--init-uptime"):
                raise UsageError(f"unknown option {option!r}")
            if not eq:
                if not rest:
                    raise UsageError(f"{option} needs a value")
                value = rest.pop(0)
            values[option] = value
        for required in ("--listen", "--state-dir"):
            if required not in values:
                raise UsageError(f"{required} is required")
        if values["--oci-runtime"] not in OCI_RUNTIMES:
            raise UsageError(f"--oci-runtime must be one of {', '.join(OCI_RUNTIMES)}")
        if values["--log-level"].upper() not in logs.LEVELS:
            raise UsageError(f"--log-level must be one of {', '.join(logs.LEVELS)}")
        self.listen = values["--listen"]
        self.state_dir = values["--state-dir"]
        self.oci_runtime: RuntimeChoice = values["--oci-runtime"]  # type: ignore[assignment]
        self.log_level = values["--log-level"].upper()
        self.init_uptime: float | None = None
        if "--init-uptime" in values:
            try:
                self.init_uptime = float(values["--init-uptime"])
            except ValueError:
                raise UsageError(f"--init-uptime: not a number: {values['--init-uptime']!r}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]) or argv[1:2] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    try:
        args = ServeArgs(argv)
    except UsageError as exc:
        print(f"vmsandbox-guest: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    logs.configure(args.log_level)
    try:
        agent = Agent(args.state_dir, args.oci_runtime, before_containers=_become_subreaper)
        listener = open_listener(args.listen)
    except VMSandboxError as exc:
        print(f"vmsandbox-guest: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, frame: FrameType | None) -> None:
        listener.close()

    _signal.signal(_signal.SIGTERM, _stop)
    if args.init_uptime is not None:
        agent.init_uptime = args.init_uptime
        agent.ready_uptime = _uptime()
    _announce(args.listen)
    agent.preload()
    agent.serve(listener)
    return 0


def run_as_init(argv: list[str] | None = None) -> None:
    """The new root's PID 1 (started by init.sh): serve, then power the VM off however it ended.

    The agent's lifetime is the VM's. PID 1 must never exit (the kernel panics), so a crash is
    printed, not raised, and the process becomes ``poweroff``.
    """
    try:
        reason = f"exited with status {main(argv)}"
    except BaseException as exc:  # anything at all: the VM must still stop, saying why
        sys.excepthook(type(exc), exc, exc.__traceback__)
        reason = f"failed: {exc!r}"
    print(f"vmsandbox-guest: guest agent {reason}; powering off", flush=True)
    os.sync()
    try:
        os.execv(POWER_OFF[0], POWER_OFF)
    except OSError as exc:
        print(f"vmsandbox-guest: cannot power off: {exc}", flush=True)
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
