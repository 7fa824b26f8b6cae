"""``python -m vmsandbox.api crd`` prints the CRD; ``reference`` prints the README's API tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmsandbox.api.crd import render_yaml
from vmsandbox.api.reference import MarkersMissing, render_reference, replace_block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.api", description=__doc__)
    parser.add_argument("what", choices=["crd", "reference"], help="what to print")
    parser.add_argument(
        "--write",
        type=Path,
        metavar="MARKDOWN",
        help="reference only: replace the generated block of this file instead of printing",
    )
    args = parser.parse_args(argv)
    if args.what == "crd":
        if args.write is not None:
            parser.error("--write applies to reference only")
        sys.stdout.write(render_yaml())
        return 0
    if args.write is None:
        sys.stdout.write(render_reference())
        return 0
    try:
        args.write.write_text(replace_block(args.write.read_text(), render_reference()))
    except (OSError, MarkersMissing) as exc:
        print(f"python -m vmsandbox.api reference: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
