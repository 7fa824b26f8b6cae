"""Where the runtime keeps VM snapshots, and the annotation that creates a sandbox from one.

A snapshot directory is a path the VMM reads guest memory from, so it is never taken from a
tenant: the restore annotation lives under the reserved ``io.vmsandbox.`` prefix (admission
refuses it on a VMSandbox), and whatever names a directory, the runtime accepts only one that
lies under its own snapshot root, after resolving symlinks.
"""

from __future__ import annotations

from pathlib import Path

from vmsandbox.runtime.errors import BadPath

#: Set by the node agent only: create this pod sandbox by restoring the named snapshot.
ANNOTATION_RESTORE_FROM = "io.vmsandbox.restore-from"
SNAPSHOTS_DIR = "snapshots"


def snapshot_root(state_root: Path) -> Path:
    return state_root / SNAPSHOTS_DIR


def snapshot_dir(state_root: Path, value: str | Path, *, step: str) -> Path:
    """``value`` (absolute, or relative to the snapshot root) if it lies strictly inside the
    snapshot root; refused otherwise, naming ``step``."""
    root = snapshot_root(state_root).resolve()
    candidate = Path(value)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise BadPath(f"snapshot directory {str(value)!r} is not inside {root}", step=step)
    return resolved
