"""``python -m vmsandbox.api crd`` prints the CustomResourceDefinition."""

from __future__ import annotations

import argparse
import sys

from vmsandbox.api.crd import render_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.api", description=__doc__)
    parser.add_argument("what", choices=["crd"], help="what to print")
    parser.parse_args(argv)
    sys.stdout.write(render_yaml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
