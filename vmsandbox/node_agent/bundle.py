"""An OCI bundle per sandbox: the image's root filesystem (shared, never copied) and its config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vmsandbox.api.resource import VMSandbox
from vmsandbox.node_agent.images import Image
from vmsandbox.node_agent.ociconfig import build_config


def build_bundle(bundle: Path, sandbox: VMSandbox, image: Image) -> Path:
    """Fresh every time (a restarted container starts from the image again, as in Kubernetes).

    The bundle's ``rootfs`` points at the image cache's one unpacked tree, which nothing
    writes to: the runtime, told the image's digest, makes the VM's shared read-only disk from
    it, or (process backend) has the agent put a per-container overlay over it.
    """
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    rootfs = bundle / "rootfs"
    rootfs.symlink_to(image.rootfs, target_is_directory=True)
    try:
        config = build_config(sandbox, image.config, rootfs)
    except BaseException:
        shutil.rmtree(bundle, ignore_errors=True)
        raise
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle
