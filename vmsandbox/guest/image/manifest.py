"""``manifest.json``: what a guest image directory holds and what it was built from."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vmsandbox.guest.image.errors import GuestImageError

ArtifactName = Literal["vmlinuz", "initramfs.img", "rootfs.img"]
ARTIFACT_NAMES: tuple[ArtifactName, ...] = ("vmlinuz", "initramfs.img", "rootfs.img")
MANIFEST_NAME = "manifest.json"


class PackageVersion(BaseModel):
    """One installed or extracted package, Debian's or a Python wheel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    architecture: str = ""


class Artifact(BaseModel):
    """Size and digest of one artifact file, so a consumer can check what it boots."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def of(cls, path: Path) -> Artifact:
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return cls(size=size, sha256=digest.hexdigest())


class Manifest(BaseModel):
    """Everything a guest image was made of; ``cache_key`` ties it to the build inputs."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    cache_key: str
    built_at: datetime
    build_seconds: float = Field(ge=0)
    suite: str
    kernel: PackageVersion
    kernel_release: str
    busybox: PackageVersion
    #: Module names in the order the initramfs loads them (dependencies first).
    initramfs_modules: list[str]
    #: Requested modules the kernel has built in, so nothing is loaded for them.
    builtin_modules: list[str]
    rootfs_packages: list[PackageVersion]
    python_packages: list[PackageVersion]
    artifacts: dict[ArtifactName, Artifact]

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as exc:
            raise GuestImageError(f"{path} does not exist", step="manifest") from exc
        except ValidationError as exc:
            raise GuestImageError(f"{path} is not a valid manifest: {exc}", step="manifest") from exc

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_NAME).write_text(self.model_dump_json(indent=2) + "\n")

    def verify(self, directory: Path) -> None:
        """Check every artifact against its recorded size and digest."""
        missing = set(ARTIFACT_NAMES) - set(self.artifacts)
        if missing:
            raise GuestImageError(f"manifest lists no {', '.join(sorted(missing))}", step="verify")
        for name, expected in self.artifacts.items():
            path = directory / name
            if not path.is_file():
                raise GuestImageError(f"{path} is missing", step="verify")
            actual = Artifact.of(path)
            if actual != expected:
                raise GuestImageError(
                    f"{path}: size {actual.size} sha256 {actual.sha256}, manifest says size "
                    f"{expected.size} sha256 {expected.sha256}",
                    step="verify",
                )
