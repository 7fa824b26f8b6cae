"""Bounded logs: a container's output and its VM's serial console never grow without limit.

A log ``path`` is kept as at most ``max_files`` files: ``path`` (being written) and ``path.1``
... ``path.<max_files - 1>`` (older). The relay writes the container log itself and rotates it
by renaming. The serial log is written by the VMM, which holds it open, so it is rotated by
copying it aside and truncating it (the VMM writes it in append mode where it can).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vmsandbox.runtime.rotation import RotatingLog, rotate_foreign, rotated

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILES",
    "LogLimits",
    "RotatingLog",
    "log_files",
    "rotate_foreign",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 2


class LogLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1)
    max_files: int = Field(default=DEFAULT_MAX_FILES, ge=1)


def log_files(path: Path, limits: LogLimits | None = None) -> list[Path]:
    """The existing files of the log ``path``, oldest first."""
    most = (limits or LogLimits()).max_files
    found = [rotated(path, i) for i in range(most + 8)]
    return [p for p in reversed(found) if p.is_file()]
