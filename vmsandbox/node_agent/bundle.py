"""An OCI bundle per sandbox: the image's root filesystem (shared, never copied) and its config.json."""

from __future__ import annotations

import json
from pathlib import Path

from vmsandbox.api.resource import VMSandbox
from vmsandbox.node_agent.images import Image
from vmsandbox.node_agent.ociconfig import build_config
from vmsandbox.node_agent.overlay import mount_overlay, remove_bundle


def build_bundle(bundle: Path, sandbox: VMSandbox, image: Image, *, link_rootfs: bool = False) -> Path:
    """Fresh every time (a restarted container starts from the image again, as in Kubernetes).

    ``link_rootfs``: the backend only reads the root filesystem to build the VM's shared disk
    from it (every backend but ``process``), so the bundle points at the cached tree. Otherwise
    the container runs on the cached tree itself, under an overlay whose writable layer is the
    bundle's own (:mod:`vmsandbox.node_agent.overlay`).
    """
    remove_bundle(bundle)
    bundle.mkdir(parents=True)
    rootfs = bundle / "rootfs"
    try:
        if link_rootfs:
            rootfs.symlink_to(image.rootfs, target_is_directory=True)
        else:
            mount_overlay(image.rootfs, bundle)
        config = build_config(sandbox, image.config, rootfs)
    except BaseException:
        remove_bundle(bundle)
        raise
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle
