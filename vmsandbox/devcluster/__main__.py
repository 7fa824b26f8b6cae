"""``python -m vmsandbox.devcluster``: run the local control plane until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.errors import DevClusterError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.devcluster", description=__doc__)
    parser.add_argument(
        "--crds", type=Path, default=None, help="CRD directory (default: the repository's crds/)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep state and logs here instead of a temp dir"
    )
    parser.add_argument(
        "--request-log", type=Path, default=None, help="append each API request here (JSON lines)"
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with LocalCluster(
            crd_dir=args.crds or "default", workdir=args.workdir, request_log=args.request_log
        ) as cluster:
            print(f"export KUBECONFIG={cluster.kubeconfig_path}", flush=True)
            print(f"# API at {cluster.url}; Ctrl-C stops it", flush=True)
            stop.wait()
    except DevClusterError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
