"""Busybox bundles, OCI schema validation and leak checks for the runtime tests."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.leaks import pids_mentioning, sockets_under
from tests.tools import missing
from vmsandbox.hypervisor.forkserver import SERVER_DIR

BUSYBOX = Path(os.environ.get("VMSANDBOX_TEST_BUSYBOX", "/bin/busybox"))
SCHEMA_DIR = Path(
    os.environ.get(
        "VMSANDBOX_OCI_SCHEMA_DIR", "/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema"
    )
)
APPLETS = ("sh", "true", "false", "sleep", "echo", "cat", "touch", "test", "ls", "tty", "kill", "id")
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def base_config(args: list[str]) -> dict[str, Any]:
    """A Linux config in the shape ``runc spec`` produces, running ``args``."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(CAPS) for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "vmsb-test",
        "mounts": [
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
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "ro"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def counts(log: Path) -> list[int]:
    """The numbers a counting container has written to ``log`` so far."""
    return [int(word) for word in log.read_text().split() if word.isdigit()]


def wait_for_count(log: Path, above: int, timeout: float = 20.0, interval: float = 0.05) -> int:
    """The counter's latest number once it has passed ``above``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = counts(log)
        if seen and seen[-1] > above:
            return seen[-1]
        time.sleep(interval)
    raise AssertionError(f"the counter did not pass {above} within {timeout}s: {counts(log)[-5:]}")


def make_rootfs(dest: Path) -> Path:
    """A minimal root filesystem: Debian's static busybox and its applets as symlinks."""
    if not BUSYBOX.exists():
        missing(f"{BUSYBOX} missing: install busybox-static")
    (dest / "bin").mkdir(parents=True)
    for name in ("tmp", "proc", "sys", "dev"):
        (dest / name).mkdir()
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in APPLETS:
        (dest / "bin" / applet).symlink_to("busybox")
    return dest


def write_bundle(path: Path, config: dict[str, Any], rootfs: Path | None = None) -> Path:
    """A bundle directory: config.json plus a fresh ``rootfs`` dir, unless ``rootfs`` is shared."""
    path.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config)
    if rootfs is None:
        make_rootfs(path / "rootfs")
    elif config["root"]["path"] == "rootfs":
        config["root"]["path"] = str(rootfs)
    (path / "config.json").write_text(json.dumps(config))
    return path


def shared_network_config(script: str) -> dict[str, Any]:
    """``sh -c script`` as the node agent writes a container: sharing its VM's network (no network
    namespace of its own)."""
    config = base_config(["/bin/sh", "-c", script])
    config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
    return config


def pod_bundle(path: Path, script: str, annotations: dict[str, str] | None = None) -> Path:
    """A pod sandbox's bundle (its own busybox root) whose container shares the VM's network."""
    config = shared_network_config(script)
    config["annotations"] = {"io.kubernetes.cri.container-type": "sandbox", **(annotations or {})}
    return write_bundle(path, config, rootfs=None)


def short_root() -> Path:
    """A state root short enough for AF_UNIX socket paths under it."""
    root = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))
    root.chmod(0o711)  # a VMM user reaches its VM's files below
    return root


# ---- OCI JSON schemas ------------------------------------------------------------------


class Schemas:
    def __init__(self, directory: Path) -> None:
        from jsonschema import Draft4Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT4

        resources = []
        for file in directory.glob("*.json"):
            contents = json.loads(file.read_text())
            resources.append((file.as_uri(), Resource.from_contents(contents, default_specification=DRAFT4)))
        registry: Registry[Any] = Registry().with_resources(resources)
        # A top-level $ref to each file's URI makes relative $refs resolve against that file.
        self._validators = {
            name: Draft4Validator({"$ref": (directory / name).as_uri()}, registry=registry)
            for name in ("state-schema.json", "config-schema.json")
        }

    def errors(self, name: str, document: Any) -> list[str]:
        return [e.message for e in self._validators[name].iter_errors(document)]


def load_schemas() -> Schemas:
    if not (SCHEMA_DIR / "state-schema.json").exists():
        pytest.skip(f"OCI schemas not found in {SCHEMA_DIR}: install golang-github-opencontainers-specs-dev")
    return Schemas(SCHEMA_DIR)


# ---- leak checks -----------------------------------------------------------------------


def no_vms(vms: Path) -> bool:
    """``vms`` (a root's ``.vms``) holds no VM: absent, empty, or only the fork server's directory."""
    return not vms.exists() or all(entry.name == SERVER_DIR for entry in vms.iterdir())


def sandbox_sockets(root: Path) -> list[Path]:
    """Unix sockets under ``root`` but the fork server's (it serves the root's next sandboxes)."""
    return [path for path in sockets_under(root) if SERVER_DIR not in path.parts]


def fork_servers() -> set[int]:
    """Running fork servers (and their waiters), of any state root: no sandbox's processes."""
    return set(pids_mentioning("vmsandbox.hypervisor.forkserver"))


def live_children() -> list[int]:
    """Our own child processes, running or unreaped (relays we forked and did not clean up)."""
    me = str(os.getpid())
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if stat[1] == me:
            out.append(int(entry.name))
    return out


def _cached_disk(rel: Path) -> bool:
    """The shared disk cache outlives containers by design; a half-made disk there is a leak."""
    if rel.parts[0] != ".disks":
        return False
    return len(rel.parts) == 1 or (
        len(rel.parts) == 2
        and (rel.name.endswith(".ext4") or rel.name.endswith(".lock"))
        and ".tmp" not in rel.name
    )


def leftovers(root: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Everything under the state root except an empty ``.vms`` (or one holding only the fork
    server, which serves the root's next sandboxes), the disk cache and ``keep``'s ids."""
    if not root.exists():
        return []
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if rel.parts[0] in keep or (str(rel) == ".vms" and no_vms(p)) or _cached_disk(rel):
            continue
        if rel.parts[:2] == (".vms", SERVER_DIR):
            continue
        if rel.parts[0] == ".vms" and keep:
            continue
        out.append(str(p))
    return sorted(out)
