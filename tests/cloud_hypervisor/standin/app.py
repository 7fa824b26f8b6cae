"""Entry point of the stand-in ``cloud-hypervisor`` executable.

Command line as the real binary's: ``--api-socket path=<p>`` (or ``fd=<n>``, or a bare path);
every other flag (``-v``, ``--seccomp false``, ``--log-file ...``) is accepted and ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from standin import openapi
from standin.api_server import ApiServer
from standin.knobs import Knobs
from standin.vmm import StandinVmm, log


def _api_socket_arg(value: str) -> tuple[str, str]:
    for part in value.split(","):
        key, sep, rest = part.partition("=")
        if sep and key in ("path", "fd"):
            return key, rest
    if "=" not in value:
        return "path", value
    raise SystemExit(f"--api-socket {value!r}: expected path=<socket> or fd=<n>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cloud-hypervisor", add_help=False)
    parser.add_argument("--api-socket", required=True)
    args, ignored = parser.parse_known_args(argv)
    knobs = Knobs.from_env()
    log(f"emulating Cloud Hypervisor {knobs.version}, pid {os.getpid()}, guest {knobs.guest}")
    log(f"injected faults: {sorted(knobs.faults) or 'none'}")
    if ignored:
        log(f"ignoring flags {ignored}")
    if "exit-before-ping" in knobs.faults:
        log("Error: injected fault exit-before-ping: exiting before the API socket exists")
        return 1

    spec: Path | None = openapi.spec_path()
    if spec is not None and spec.is_file():
        log(f"validating request bodies against {spec}")
    else:
        log(f"no OpenAPI document at {spec}: request bodies are NOT validated")
        spec = None

    kind, value = _api_socket_arg(args.api_socket)
    api_path: Path | None = None
    lock_file = None
    if kind == "fd":
        listener = socket.socket(fileno=int(value))
    else:
        api_path = Path(value)
        if knobs.locks_api_socket:
            lock_file = open(f"{api_path}.lock", "a")  # noqa: SIM115 (held for the process lifetime)
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"Error: ApiSocketInUse({api_path})")
                return 1
            api_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(api_path))
        except OSError as exc:
            log(f"Error: CreateApiServerSocket: {exc.strerror} (os error {exc.errno})")
            return 1
    listener.listen(16)

    exit_requested = threading.Event()
    reason: list[str] = []

    def request_exit(why: str) -> None:
        reason.append(why)
        exit_requested.set()

    vmm = StandinVmm(knobs, spec, request_exit)
    server = ApiServer(listener, vmm, knobs, request_exit)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: request_exit(signal.Signals(s).name))
    server.start()
    try:
        while not exit_requested.wait(0.2):
            pass
    finally:
        log(f"exiting ({reason[0] if reason else 'interrupted'})")
        vmm.shutdown_all()
        server.close()
        if api_path is not None:
            api_path.unlink(missing_ok=True)
        if lock_file is not None:
            with contextlib.suppress(OSError):
                lock_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
