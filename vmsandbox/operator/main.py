"""``vmsandbox-operator``: run the operator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from vmsandbox.errors import VMSandboxError
from vmsandbox.kube import Connection
from vmsandbox.operator.config import OperatorConfig
from vmsandbox.operator.runner import Operator


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vmsandbox-operator", description=__doc__)
    parser.add_argument(
        "--config", type=Path, help="YAML file of operator settings (camelCase or snake_case keys)"
    )
    parser.add_argument(
        "--kubeconfig", type=Path, help="default: in-cluster service account, then $KUBECONFIG"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


async def _serve(config: OperatorConfig, connection: Connection) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Operator(config, connection).run(stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    try:
        config = OperatorConfig.load(args.config)
        connection = Connection.load(args.kubeconfig)
    except VMSandboxError as exc:
        print(f"vmsandbox-operator: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(config, connection))
    return 0
