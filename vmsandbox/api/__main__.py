"""``python -m vmsandbox.api crd`` prints a CRD (``--dir`` writes them all); ``reference`` prints the
README's API tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmsandbox.api.constants import KIND
from vmsandbox.api.crd import FILES, RENDERERS, render_yaml
from vmsandbox.api.reference import MarkersMissing, render_reference, replace_blocks


def _write_crds(dirs: list[Path]) -> None:
    for directory in dirs:
        for kind, name in FILES.items():
            (directory / name).write_text(render_yaml(kind))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.api", description=__doc__)
    parser.add_argument("what", choices=["crd", "reference"], help="what to print")
    parser.add_argument(
        "--write",
        type=Path,
        metavar="MARKDOWN",
        help="reference only: replace the generated blocks of this file instead of printing",
    )
    parser.add_argument(
        "--kind", choices=sorted(RENDERERS), default=KIND, help="the kind to print (default: %(default)s)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        action="append",
        metavar="DIR",
        help="crd only: write every kind's CRD into DIR (repeatable: crds/, charts/vmsandbox/crds/)",
    )
    args = parser.parse_args(argv)
    if args.what == "crd":
        if args.write is not None:
            parser.error("--write applies to reference only")
        if args.dir:
            _write_crds(args.dir)
        else:
            sys.stdout.write(render_yaml(args.kind))
        return 0
    if args.dir:
        parser.error("--dir applies to crd only")
    if args.write is None:
        sys.stdout.write(render_reference(args.kind))
        return 0
    try:
        args.write.write_text(replace_blocks(args.write.read_text()))
    except (OSError, MarkersMissing) as exc:
        print(f"python -m vmsandbox.api reference: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
