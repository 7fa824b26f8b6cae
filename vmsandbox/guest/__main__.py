"""``python3 -m vmsandbox.guest serve --listen SPEC --state-dir DIR [--oci-runtime ...]``."""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.agent import Agent
from vmsandbox.guest.transport import open_listener

READY_LINE = "vmsandbox-guest: ready"
PR_SET_CHILD_SUBREAPER = 36
KMSG = Path("/dev/kmsg")
UPTIME = Path("/proc/uptime")


def _become_subreaper() -> None:
    """Orphaned container inits (their runc parent exits after create) come back to us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        logging.getLogger("vmsandbox.guest").warning("cannot become a child subreaper")


def _announce(listen: str) -> None:
    print(READY_LINE, flush=True)
    # In a VM the console may be quiet; the kernel log always reaches the host's serial log.
    # A unix listener means the agent runs on a host, whose kernel log is not ours to write.
    if not listen.startswith("unix:") and KMSG.exists():
        try:
            with KMSG.open("w") as kmsg:
                kmsg.write(READY_LINE + "\n")
        except OSError:
            pass


def _uptime() -> float | None:
    """Seconds since the (guest) kernel started, the clock init's own timestamps use."""
    try:
        return float(UPTIME.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m vmsandbox.guest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="listen for the host runtime")
    serve.add_argument("--listen", required=True, help="unix:PATH | vsock:PORT | serial:PATH | auto")
    serve.add_argument("--state-dir", required=True, type=Path)
    serve.add_argument("--oci-runtime", choices=["auto", "crun", "runc"], default="auto")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument(
        "--init-uptime",
        type=float,
        help="guest uptime (s) when init began; given, the agent reports it and its own in its pong",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s guest %(levelname)s %(message)s"
    )
    _become_subreaper()
    try:
        agent = Agent(args.state_dir, args.oci_runtime)
        listener = open_listener(args.listen)
    except VMSandboxError as exc:
        print(f"vmsandbox-guest: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, frame: FrameType | None) -> None:
        listener.close()

    signal.signal(signal.SIGTERM, _stop)
    if args.init_uptime is not None:
        agent.init_uptime = args.init_uptime
        agent.ready_uptime = _uptime()
    _announce(args.listen)
    agent.serve(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
