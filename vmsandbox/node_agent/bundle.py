"""An OCI bundle per sandbox: a private copy of the image's root filesystem and its config.json."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from vmsandbox.api.resource import VMSandbox
from vmsandbox.node_agent.errors import BundleFailed
from vmsandbox.node_agent.images import Image
from vmsandbox.node_agent.ociconfig import build_config


def build_bundle(bundle: Path, sandbox: VMSandbox, image: Image, *, link_rootfs: bool = False) -> Path:
    """Fresh every time (a restarted container starts from the image again, as in Kubernetes).

    ``link_rootfs``: the backend only reads the root filesystem to build the VM's disk from it
    (every backend but ``process``), so the bundle points at the cached copy instead of copying.
    """
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    rootfs = bundle / "rootfs"
    if link_rootfs:
        rootfs.symlink_to(image.rootfs, target_is_directory=True)
        return _finish(bundle, sandbox, image)
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", str(image.rootfs), str(rootfs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        shutil.rmtree(bundle, ignore_errors=True)
        raise BundleFailed(f"copying the image root filesystem: {proc.stderr.strip()}", step="bundle rootfs")
    return _finish(bundle, sandbox, image)


def _finish(bundle: Path, sandbox: VMSandbox, image: Image) -> Path:
    rootfs = bundle / "rootfs"
    try:
        config = build_config(sandbox, image.config, rootfs)
    except BaseException:
        shutil.rmtree(bundle, ignore_errors=True)
        raise
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle
