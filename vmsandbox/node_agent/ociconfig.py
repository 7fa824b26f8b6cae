"""The container's OCI ``config.json``: the image config merged with the sandbox spec.

Merging follows Kubernetes: ``command`` replaces the image's Entrypoint and, when given, also
drops the image's Cmd; ``args`` replaces Cmd; spec env entries override image env by name;
``workingDir`` overrides the image's; the image's ``User`` (numeric or a name resolved in the
image's own /etc/passwd and /etc/group, read inside the image's root) becomes ``process.user``.
The spec's ``annotations`` are copied in except reserved keys, plus the agent's own: the pod
role and ``io.vmsandbox.*`` keys naming the sandbox and VM size.

The container shares the VM's network (no network namespace): the VM is the isolation boundary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmsandbox.api.constants import reserved_annotation
from vmsandbox.api.resource import VMSandbox
from vmsandbox.node_agent.errors import ImageInvalid, InvalidImage
from vmsandbox.node_agent.images import ImageConfig
from vmsandbox.node_agent.inroot import read_in_root
from vmsandbox.runtime.podtype import TYPE_KEYS
from vmsandbox.runtime.vmsize import ANNOTATION_MEMORY_MIB, ANNOTATION_VCPUS

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Annotations the agent adds so every layer below can name the sandbox.
ANNOTATION_NAMESPACE = "io.vmsandbox.sandbox.namespace"
ANNOTATION_NAME = "io.vmsandbox.sandbox.name"
ANNOTATION_UID = "io.vmsandbox.sandbox.uid"
#: The pod role the runtime reads first; the agent always sets it, to a pod sandbox.
CONTAINER_TYPE = TYPE_KEYS[0]
PASSWD = "/etc/passwd"
GROUP = "/etc/group"

_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
]

_MASKED = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def process_args(sandbox: VMSandbox, image: ImageConfig) -> list[str]:
    spec = sandbox.spec
    if spec.command is not None:
        argv = list(spec.command) + list(spec.args or [])
    else:
        argv = list(image.entrypoint or []) + list(spec.args if spec.args is not None else image.cmd or [])
    if not argv:
        raise InvalidImage(
            f"image {spec.image!r} defines no Entrypoint or Cmd and the sandbox sets no command: "
            "nothing to run",
            step="spec.command",
        )
    return argv


def process_env(sandbox: VMSandbox, image: ImageConfig) -> list[str]:
    merged: dict[str, str] = {}
    for entry in image.env or []:
        key, _, value = entry.partition("=")
        if key:
            merged[key] = value
    for var in sandbox.spec.env or []:
        merged[var.name] = var.value
    merged.setdefault("PATH", DEFAULT_PATH.partition("=")[2])
    merged.setdefault("HOSTNAME", sandbox.metadata.name or "sandbox")
    return [f"{k}={v}" for k, v in merged.items()]


def _table(rootfs: Path, path: str) -> list[list[str]]:
    """The colon-separated entries of an image's ``/etc/passwd`` or ``/etc/group`` (none if absent)."""
    data = read_in_root(rootfs, path)
    text = (data or b"").decode("utf-8", errors="replace")
    return [line.split(":") for line in text.splitlines()]


def _lookup(rootfs: Path, path: str, name: str, what: str, image_ref: str) -> int:
    for fields in _table(rootfs, path):
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    raise ImageInvalid(
        f"image {image_ref!r}: {what} {name!r} is not in the image's {path}",
        step="image config User",
    )


def process_user(image: ImageConfig, rootfs: Path, image_ref: str) -> dict[str, int]:
    """``uid[:gid]`` with names looked up in the image (resolved inside its root filesystem).

    A name the image does not define is an error: never a silent fallback to root.
    """
    raw = (image.user or "").strip()
    if not raw:
        return {"uid": 0, "gid": 0}
    user, _, group = raw.partition(":")
    uid = int(user) if user.isdigit() else _lookup(rootfs, PASSWD, user, "user", image_ref)
    if group:
        gid = int(group) if group.isdigit() else _lookup(rootfs, GROUP, group, "group", image_ref)
        return {"uid": uid, "gid": gid}
    for fields in _table(rootfs, PASSWD):
        if len(fields) >= 4 and fields[2] == str(uid) and fields[3].isdigit():
            return {"uid": uid, "gid": int(fields[3])}
    return {"uid": uid, "gid": 0}


def container_annotations(sandbox: VMSandbox) -> dict[str, str]:
    """The spec's annotations without reserved keys (admission refuses them; this is the backstop),
    plus the agent's own: the pod role (always a pod sandbox of its own VM) and the sandbox's names."""
    spec = sandbox.spec
    annotations = {k: v for k, v in (spec.annotations or {}).items() if not reserved_annotation(k)}
    annotations.update(
        {
            CONTAINER_TYPE: "sandbox",
            ANNOTATION_NAMESPACE: sandbox.metadata.namespace or "",
            ANNOTATION_NAME: sandbox.metadata.name or "",
            ANNOTATION_UID: sandbox.metadata.uid or "",
            ANNOTATION_VCPUS: str(spec.resources.vcpus),
            ANNOTATION_MEMORY_MIB: str(spec.resources.memory_mib),
        }
    )
    return annotations


def build_config(sandbox: VMSandbox, image: ImageConfig, rootfs: Path) -> dict[str, Any]:
    """The full OCI runtime config; ``rootfs`` (the bundle's ``rootfs`` directory) resolves image users."""
    spec = sandbox.spec
    annotations = container_annotations(sandbox)
    caps = list(_CAPABILITIES)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": process_user(image, rootfs, spec.image),
            "args": process_args(sandbox, image),
            "env": process_env(sandbox, image),
            "cwd": spec.working_dir or image.working_dir or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": (sandbox.metadata.name or "sandbox")[:63],
        "mounts": [dict(m) for m in _MOUNTS],
        "annotations": annotations,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
    }
