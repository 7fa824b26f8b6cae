"""Helpers for the tenant-boundary tests: Roles for test users (on :mod:`tests.security.tenant`),
images with hostile files, and what a sandbox shows (status, events) to search for leaked content."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.node_agent.support import Cluster, run, unique
from tests.security.tenant import RBAC, bind, create
from vmsandbox.devcluster.cluster import LocalCluster

Rule = tuple[str, str, list[str]]


@dataclass
class Tenant:
    user: str
    kubeconfig: Path
    #: The tenant's hands on the API server (requests made as the tenant user).
    cluster: Cluster


def grant(kube: LocalCluster, namespace: str, user: str, rules: list[Rule]) -> None:
    """A Role with ``rules`` (group, resource, verbs) in ``namespace``, bound to ``user``."""
    name = unique("role")
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": [{"apiGroups": [g], "resources": [r], "verbs": v} for g, r, v in rules],
    }
    create(kube, f"{RBAC}/namespaces/{namespace}/roles", role)
    bind(kube, namespace, "Role", name, [{"kind": "User", "name": user}], name=name)


def visible_text(cluster: Cluster, name: str) -> str:
    """Everything a sandbox shows its owner: the object (status included) and its events."""
    return json.dumps(cluster.get(name)) + json.dumps(cluster.events(name))


def build_image(layout: Path, tag: str, change: Callable[[Path], None], user: str | None = None) -> str:
    """Add ``tag`` to the OCI layout ``layout``: busybox whose root filesystem ``change`` edits."""
    if not (layout / "index.json").exists():
        run(["umoci", "init", "--layout", str(layout)])
    work = layout.parent / f".{tag}-build"
    shutil.rmtree(work, ignore_errors=True)
    run(["umoci", "new", "--image", f"{layout}:{tag}"])
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(work)])
    rootfs = work / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc").mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "true", "id", "cat", "echo"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    change(rootfs)
    run(["umoci", "repack", "--image", f"{layout}:{tag}", str(work)])
    shutil.rmtree(work)
    config = ["umoci", "config", "--image", f"{layout}:{tag}", "--config.env", "PATH=/bin"]
    config += ["--config.cmd", "true"]
    if user is not None:
        config += ["--config.user", user]
    run(config)
    return f"oci:{layout}:{tag}"
