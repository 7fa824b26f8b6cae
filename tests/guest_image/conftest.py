"""One real guest image build from a clean cache, shared by the tests that need artifacts."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmsandbox.guest.image.build import BuildOptions, BuildResult, build


@dataclass(frozen=True)
class CleanBuild:
    result: BuildResult
    cache: Path
    out: Path


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "mmdebstrap's root mode needs root"
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "depmod", "mmdebstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture(scope="session")
def clean_build(tmp_path_factory: pytest.TempPathFactory) -> CleanBuild:
    reason = _missing_prerequisite()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("guest-image")
    options = BuildOptions(out=root / "out", cache_dir=root / "cache")
    return CleanBuild(result=build(options), cache=root / "cache", out=root / "out")
