"""The manifest model: round trip, strictness, and checking artifacts against it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.manifest import ARTIFACT_NAMES, Artifact, Manifest, PackageVersion


def _image_dir(tmp_path: Path) -> tuple[Path, Manifest]:
    for index, name in enumerate(ARTIFACT_NAMES):
        (tmp_path / name).write_bytes(bytes([index]) * (1000 + index))
    manifest = Manifest(
        cache_key="abc123",
        built_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        build_seconds=12.5,
        suite="bookworm",
        kernel=PackageVersion(
            name="linux-image-6.1.0-1-cloud-amd64", version="6.1.1-1", architecture="amd64"
        ),
        kernel_release="6.1.0-1-cloud-amd64",
        busybox=PackageVersion(name="busybox-static", version="1:1.35.0-4", architecture="amd64"),
        initramfs_modules=["virtio", "virtio_pci"],
        builtin_modules=["ext4"],
        rootfs_packages=[PackageVersion(name="python3", version="3.11.2-1", architecture="amd64")],
        python_packages=[PackageVersion(name="pydantic", version="2.0")],
        artifacts={name: Artifact.of(tmp_path / name) for name in ARTIFACT_NAMES},
    )
    manifest.write(tmp_path)
    return tmp_path, manifest


def test_artifact_digest_is_sha256_of_content(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = b"x" * (3 * 1024 * 1024 + 7)  # spans several read chunks
    path.write_bytes(data)
    assert Artifact.of(path) == Artifact(size=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_round_trip_and_verify(tmp_path: Path) -> None:
    directory, manifest = _image_dir(tmp_path)
    loaded = Manifest.load(directory)
    assert loaded == manifest
    loaded.verify(directory)


def test_verify_catches_changed_content_of_same_size(tmp_path: Path) -> None:
    directory, manifest = _image_dir(tmp_path)
    data = bytearray((directory / "rootfs.img").read_bytes())
    data[10] ^= 0xFF
    (directory / "rootfs.img").write_bytes(bytes(data))
    with pytest.raises(GuestImageError, match=r"rootfs\.img: size 1002 sha256") as info:
        manifest.verify(directory)
    assert info.value.step == "verify"


def test_verify_catches_missing_artifact(tmp_path: Path) -> None:
    directory, manifest = _image_dir(tmp_path)
    (directory / "vmlinuz").unlink()
    with pytest.raises(GuestImageError, match="vmlinuz is missing"):
        manifest.verify(directory)


def test_verify_requires_every_artifact_listed(tmp_path: Path) -> None:
    directory, manifest = _image_dir(tmp_path)
    partial = manifest.model_copy(update={"artifacts": {"vmlinuz": manifest.artifacts["vmlinuz"]}})
    with pytest.raises(GuestImageError, match=r"initramfs\.img, rootfs\.img"):
        partial.verify(directory)


def test_load_names_the_file_when_invalid_or_absent(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match=r"manifest\.json does not exist"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"cache_key": 1}')
    with pytest.raises(GuestImageError, match="is not a valid manifest") as info:
        Manifest.load(tmp_path)
    assert info.value.step == "manifest"


def test_model_rejects_unknown_artifacts_and_bad_digests() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        Artifact(size=1, sha256="not-a-digest")
    with pytest.raises(ValidationError):
        Manifest.model_validate(
            {
                "cache_key": "k",
                "built_at": "2026-01-01T00:00:00Z",
                "build_seconds": 1,
                "suite": "bookworm",
                "kernel": {"name": "k", "version": "1"},
                "kernel_release": "r",
                "busybox": {"name": "b", "version": "1"},
                "initramfs_modules": [],
                "builtin_modules": [],
                "rootfs_packages": [],
                "python_packages": [],
                "artifacts": {"bzImage": {"size": 1, "sha256": "0" * 64}},
            }
        )
