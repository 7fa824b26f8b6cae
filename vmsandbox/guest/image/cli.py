"""``vmsandbox-guest-image``: build (or check) the guest artifacts a microVM boots."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from vmsandbox.guest.image.build import BuildOptions, build
from vmsandbox.guest.image.cache import DEFAULT_CACHE
from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.manifest import Manifest
from vmsandbox.guest.image.modules import GUEST_MODULES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmsandbox-guest-image", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("build", help="build vmlinuz, initramfs.img, rootfs.img and manifest.json")
    make.add_argument("--out", type=Path, required=True, help="directory to publish the image in")
    make.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="build cache (default: %(default)s)")
    make.add_argument("--force", action="store_true", help="rebuild even if the cache has this image")
    make.add_argument("--kernel-package", default="linux-image-cloud-amd64", help="kernel metapackage")
    make.add_argument(
        "--package-root",
        type=Path,
        help="vmsandbox package source tree to copy the guest agent from (default: the installed one)",
    )
    make.add_argument(
        "--module",
        action="append",
        dest="modules",
        help=f"kernel module for the initramfs (repeatable; default: {' '.join(GUEST_MODULES)})",
    )

    check = commands.add_parser("verify", help="check a published image against its manifest")
    check.add_argument("dir", type=Path)
    return parser


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the build removes its scratch directory."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        if args.command == "verify":
            manifest = Manifest.load(args.dir)
            manifest.verify(args.dir)
            print(f"{args.dir}: ok ({manifest.cache_key})")
            return 0
        options = BuildOptions(
            out=args.out, cache_dir=args.cache, force=args.force, kernel_package=args.kernel_package
        )
        if args.modules:
            options.modules = args.modules
        if args.package_root:
            options.package_root = args.package_root
        result = build(options)
    except GuestImageError as exc:
        print(f"vmsandbox-guest-image: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vmsandbox-guest-image: interrupted; nothing was published", file=sys.stderr)
        return 130
    how = "cached" if result.cached else "built"
    print(f"{result.out}: {how} {result.manifest.cache_key} in {result.seconds:.1f}s")
    for name, artifact in result.manifest.artifacts.items():
        print(f"  {name:<14} {_mib(artifact.size):>10}  sha256:{artifact.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
