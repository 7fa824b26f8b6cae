"""The cache key, cache entries and publishing, on small hand-made images."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vmsandbox.guest.image.build import publish
from vmsandbox.guest.image.cache import BuildInputs, Cache, source_digest
from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.manifest import ARTIFACT_NAMES, Artifact, Manifest, PackageVersion


def _inputs(**changes: object) -> BuildInputs:
    base = BuildInputs(
        suite="bookworm",
        sources=["deb http://m/debian bookworm main"],
        kernel=PackageVersion(name="linux-image-6.1.0-56-cloud-amd64", version="6.1.192-2"),
        busybox=PackageVersion(name="busybox-static", version="1:1.35.0-4"),
        variant="essential",
        rootfs_packages=[PackageVersion(name="python3.11", version="3.11.2-6")],
        python_requirements=["pydantic==2.14.4"],
        modules=["virtio_pci", "virtio_blk"],
        builder_sha256="a" * 64,
        agent_sha256="b" * 64,
    )
    return base.model_copy(update=changes)


def test_key_is_stable_for_unchanged_inputs() -> None:
    assert _inputs().key() == _inputs().key()


@pytest.mark.parametrize(
    "change",
    [
        {"kernel": PackageVersion(name="linux-image-6.1.0-56-cloud-amd64", version="6.1.193-1")},
        {"busybox": PackageVersion(name="busybox-static", version="1:1.35.0-5")},
        {"rootfs_packages": [PackageVersion(name="python3.11", version="3.11.2-6+deb12u1")]},
        {"python_requirements": ["pydantic==2.14.5"]},
        {"modules": ["virtio_pci", "virtio_blk", "virtio_net"]},
        {"builder_sha256": "c" * 64},
        {"agent_sha256": "d" * 64},
        {"sources": ["deb http://other/debian bookworm main"]},
        {"variant": "minbase"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_key_changes_with_every_input(change: dict[str, object]) -> None:
    assert _inputs(**change).key() != _inputs().key()


def test_source_digest_follows_content_and_ignores_bytecode(tmp_path: Path) -> None:
    (tmp_path / "guest/image").mkdir(parents=True)
    (tmp_path / "guest/__pycache__").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "guest/agent.py").write_text("A = 1\n")
    (tmp_path / "guest/image/build.py").write_text("B = 1\n")

    def digest() -> str:
        return source_digest(
            tmp_path, include=("__init__.py", "guest"), exclude_dirs=("image", "__pycache__")
        )

    before = digest()
    (tmp_path / "guest/__pycache__/agent.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "guest/image/build.py").write_text("B = 2\n")
    assert digest() == before, "bytecode or the excluded builder changed the agent digest"
    (tmp_path / "guest/agent.py").write_text("A = 2\n")
    assert digest() != before
    (tmp_path / "guest/agent.py").write_text("A = 1\n")
    assert digest() == before
    (tmp_path / "guest/new.py").write_text("")
    assert digest() != before


def _entry(cache: Cache, key: str, content: bytes = b"k") -> Manifest:
    scratch = cache.root / f"tmp-{key}"
    scratch.mkdir(parents=True)
    for name in ARTIFACT_NAMES:
        (scratch / name).write_bytes(content + name.encode())
    manifest = Manifest(
        cache_key=key,
        built_at=datetime.now(UTC),
        build_seconds=1,
        suite="bookworm",
        kernel=PackageVersion(name="k", version="1"),
        kernel_release="r",
        busybox=PackageVersion(name="b", version="1"),
        initramfs_modules=[],
        builtin_modules=[],
        rootfs_packages=[],
        python_packages=[],
        artifacts={name: Artifact.of(scratch / name) for name in ARTIFACT_NAMES},
    )
    manifest.write(scratch)
    cache.commit(scratch, key)
    return manifest


def test_lookup_returns_intact_entries_and_drops_damaged_ones(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    manifest = _entry(cache, "one")
    assert cache.lookup("one") == manifest
    assert cache.lookup("two") is None

    with (cache.entry("one") / "rootfs.img").open("ab") as handle:
        handle.write(b"tampered")
    assert cache.lookup("one") is None, "a damaged entry was served"
    assert not cache.entry("one").exists()


def test_lock_clears_scratch_left_by_a_killed_build(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    _entry(cache, "kept")
    (cache.root / "tmp-dead/rootfs/usr").mkdir(parents=True)
    with cache.locked():
        assert not (cache.root / "tmp-dead").exists()
    assert cache.lookup("kept") is not None


def test_commit_prunes_all_but_the_newest_entries(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    for age, key in enumerate(["old", "middle", "new"]):
        _entry(cache, key)
        os.utime(cache.entry(key), (1000 + age, 1000 + age))
    _entry(cache, "newest")
    assert sorted(p.name for p in cache.root.glob("image-*")) == ["image-new", "image-newest"]


def test_publish_links_the_entry_and_replaces_an_older_image(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    old = _entry(cache, "old", b"1")
    new = _entry(cache, "new", b"2")
    out = tmp_path / "out"

    publish(cache.entry("old"), out, old)
    assert Manifest.load(out).cache_key == "old"
    publish(cache.entry("new"), out, new)
    assert Manifest.load(out).cache_key == "new"
    Manifest.load(out).verify(out)
    assert (out / "rootfs.img").stat().st_ino == (cache.entry("new") / "rootfs.img").stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"], "staging left behind"

    before = (out / "manifest.json").stat().st_ino
    publish(cache.entry("new"), out, new)
    assert (out / "manifest.json").stat().st_ino == before, "an up-to-date image was rewritten"


def test_publish_refuses_to_replace_a_directory_that_is_not_an_image(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    manifest = _entry(cache, "k")
    out = tmp_path / "home"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(GuestImageError, match="not empty and holds no guest image") as info:
        publish(cache.entry("k"), out, manifest)
    assert info.value.step == "publish"
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "home"]


def test_unusable_cache_directory_is_a_named_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with (
        pytest.raises(GuestImageError, match="cannot use cache directory") as info,
        Cache(blocker / "c").locked(),
    ):
        pass
    assert info.value.step == "cache"
