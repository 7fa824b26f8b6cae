"""Builds the guest artifacts a microVM boots: kernel, initramfs, root image and their manifest.

Everything comes from Debian packages (the guest agent needs only Python's standard library), is
assembled without installing anything on the host or mounting anything, and is cached by the
versions and sources that went into it. ``vmsandbox-guest-image build --out DIR`` is the entry point.
"""

from vmsandbox.guest.image.build import BuildOptions, BuildResult, build
from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.manifest import ARTIFACT_NAMES, Manifest

__all__ = ["ARTIFACT_NAMES", "BuildOptions", "BuildResult", "GuestImageError", "Manifest", "build"]
