"""``vmsandbox-runtime``: a runc-compatible command line over :class:`Runtime`.

It accepts (and ignores) the flags containerd's go-runc passes to runc, so containerd's runc
shim can drive it, and writes errors to ``--log`` in runc's JSON shape for such callers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from vmsandbox.errors import VMSandboxError
from vmsandbox.hypervisor import HYPERVISORS, HypervisorConfig
from vmsandbox.hypervisor.process import ISOLATION_NOTE, ProcessDriver
from vmsandbox.runtime.runtime import DEFAULT_ROOT, Runtime
from vmsandbox.runtime.state import VMS_DIR, ContainerState

PROG = "vmsandbox-runtime"
#: The environment opt-in the process backend needs besides ``--hypervisor process``.
ALLOW_PROCESS_ENV = "VMSANDBOX_ALLOW_PROCESS_BACKEND"
DESCRIPTION = f"""\
OCI runtime that runs each pod sandbox in its own microVM (runc-compatible command line).

Hypervisors: cloud-hypervisor (KVM), qemu (KVM or TCG), process (no VM).
Note: {ISOLATION_NOTE}.
"""


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "level": record.levelname.lower(),
                "msg": record.getMessage(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            }
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help=f"state directory (default {DEFAULT_ROOT})"
    )
    p.add_argument(
        "--config", type=Path, help="YAML file of driver settings; VMSANDBOX_* variables override it"
    )
    p.add_argument("--log", type=Path, help="append log messages to this file")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--debug", action="store_true")
    p.add_argument(
        "--hypervisor",
        choices=HYPERVISORS,
        default="cloud-hypervisor",
        help=(
            "backend for new pod sandboxes (default cloud-hypervisor); process (namespaces only, "
            f"no VM) also needs {ALLOW_PROCESS_ENV}=1"
        ),
    )
    # Accepted for go-runc compatibility; they have no meaning for a VM runtime.
    p.add_argument("--systemd-cgroup", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rootless", help=argparse.SUPPRESS)
    p.add_argument("--criu", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = sub.add_parser("create", help="create a container (its process waits for start)")
    create.add_argument("--bundle", "-b", type=Path, default=None, help="bundle directory (default: cwd)")
    create.add_argument("--console", type=Path, help="pty slave to use as the container's terminal")
    create.add_argument("--console-socket", type=Path, help="unix socket that receives the pty master")
    create.add_argument("--pid-file", type=Path, help="write the container's host pid here, last")
    for flag in ("--no-pivot", "--no-new-keyring", "--detach", "-d"):
        create.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    create.add_argument("--preserve-fds", type=int, default=0, help=argparse.SUPPRESS)
    create.add_argument("--pidfd-socket", help=argparse.SUPPRESS)
    create.add_argument("id")

    start = sub.add_parser("start", help="run the created container's process")
    start.add_argument("id")
    state = sub.add_parser("state", help="print the OCI state JSON")
    state.add_argument("id")
    kill = sub.add_parser("kill", help="send a signal (default TERM) to the container")
    kill.add_argument("--all", "-a", action="store_true", help=argparse.SUPPRESS)
    kill.add_argument("id")
    kill.add_argument("signal", nargs="?", default="TERM")
    delete = sub.add_parser("delete", help="remove a stopped container (--force: any)")
    delete.add_argument("--force", "-f", action="store_true")
    delete.add_argument("id")
    for name, what in (("pause", "pause a pod sandbox's VM"), ("resume", "resume a paused pod sandbox's VM")):
        sub.add_parser(name, help=what).add_argument("id")
    snap = sub.add_parser("snapshot", help="snapshot a pod sandbox's VM into DIR under <root>/snapshots")
    snap.add_argument("id")
    snap.add_argument("dir", type=Path, help="absolute, or relative to <root>/snapshots")
    sub.add_parser(
        "drain-pool", help="stop the process backend's idle pooled agents (VMSANDBOX_PROCESS_POOL)"
    )
    sub.add_parser("sweep", help="roll back creates whose creator died; stop VMs no container owns")
    lst = sub.add_parser("list", help="list containers")
    lst.add_argument("--format", "-f", choices=["table", "json"], default="table")
    lst.add_argument("--quiet", "-q", action="store_true")
    return p


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.INFO
    handler: logging.Handler
    if args.log is not None:
        handler = logging.FileHandler(args.log)
    elif args.debug:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.NullHandler()  # errors are printed once, by main
    handler.setFormatter(
        _JsonFormatter()
        if args.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger("vmsandbox")
    root.addHandler(handler)
    root.setLevel(level)


def _print_state(state: ContainerState) -> None:
    print(state.model_dump_json(indent=2, exclude_none=True))


def _print_list(states: list[ContainerState], fmt: str, quiet: bool) -> None:
    if quiet:
        for s in states:
            print(s.id)
    elif fmt == "json":
        print(json.dumps([json.loads(s.model_dump_json(exclude_none=True)) for s in states], indent=2))
    else:
        print(f"{'ID':<24} {'PID':<8} {'STATUS':<10} {'HYPERVISOR':<17} BUNDLE")
        for s in states:
            print(f"{s.id:<24} {s.pid:<8} {s.status:<10} {s.hypervisor:<17} {s.bundle}")


def _check_backend(hypervisor: str) -> None:
    """The process backend isolates by namespaces only: a flag alone must not select it."""
    if hypervisor == "process" and os.environ.get(ALLOW_PROCESS_ENV, "") not in ("1", "true", "yes"):
        raise VMSandboxError(
            f"--hypervisor process runs containers without a VM (Linux namespaces only, not a "
            f"security boundary); set {ALLOW_PROCESS_ENV}=1 as well to use it",
            step="hypervisor",
        )


def run(args: argparse.Namespace) -> int:
    rt = Runtime(root=args.root, hypervisor=args.hypervisor, config=HypervisorConfig.load(args.config))
    if args.command == "create":
        _check_backend(args.hypervisor)
        rt.create(
            args.id,
            args.bundle,
            pid_file=args.pid_file,
            console_socket=args.console_socket,
            console_path=args.console,
            stdio=(0, 1, 2),
        )
    elif args.command == "start":
        rt.start(args.id)
    elif args.command == "state":
        _print_state(rt.state(args.id))
    elif args.command == "kill":
        rt.kill(args.id, args.signal)
    elif args.command == "delete":
        rt.delete(args.id, force=args.force)
    elif args.command in ("pause", "resume"):
        getattr(rt, args.command)(args.id)
    elif args.command == "snapshot":
        print(rt.snapshot(args.id, args.dir).model_dump_json(indent=2))
    elif args.command == "drain-pool":
        ProcessDriver.drain_pool(rt.store.root / VMS_DIR)
    elif args.command == "sweep":
        for line in rt.sweep():
            print(line)
    elif args.command == "list":
        _print_list(rt.list(), args.format, args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args)
    try:
        return run(args)
    except VMSandboxError as exc:
        logging.getLogger("vmsandbox").error("%s", exc)
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
