"""One real guest image build from a clean cache, shared by the tests that need artifacts."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import vmsandbox
from vmsandbox.guest.image.build import BuildOptions, BuildResult, build


@dataclass(frozen=True)
class CleanBuild:
    result: BuildResult
    cache: Path
    out: Path
    #: A frozen copy of the guest agent's sources: they are part of the cache key, and a
    #: working tree edited while the tests run must not look like a changed input.
    package_root: Path

    def options(self, **changes: object) -> BuildOptions:
        values: dict[str, object] = {
            "out": self.out,
            "cache_dir": self.cache,
            "package_root": self.package_root,
        }
        return BuildOptions.model_validate({**values, **changes})


def _snapshot_agent_sources(dest: Path) -> Path:
    source = Path(vmsandbox.__file__).parent
    root = dest / "vmsandbox"
    root.mkdir(parents=True)
    for name in ("__init__.py", "errors.py"):
        shutil.copy2(source / name, root / name)
    shutil.copytree(source / "guest", root / "guest", ignore=shutil.ignore_patterns("__pycache__", "image"))
    return root


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
    package_root = _snapshot_agent_sources(root / "src")
    options = BuildOptions(out=root / "out", cache_dir=root / "cache", package_root=package_root)
    return CleanBuild(
        result=build(options), cache=root / "cache", out=root / "out", package_root=package_root
    )
