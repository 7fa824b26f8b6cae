"""The image cache against a real loopback registry: pull policies, digests, single flight, eviction."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from tests.node_agent.support import Registry, run
from vmsandbox.api.spec import PullPolicy
from vmsandbox.node_agent.errors import ImageNotPresent, ImagePullFailed
from vmsandbox.node_agent.images import Image, ImageStore


def _store(
    root: Path,
    registry: Registry,
    *,
    limit: int = 1 << 30,
    in_use: set[str] | None = None,
    layout_dirs: tuple[Path, ...] = (),
) -> ImageStore:
    return ImageStore(
        root,
        limit_bytes=limit,
        insecure=lambda host: host == registry.host,
        in_use=lambda: set(in_use or ()),
        allowed_layout_dirs=layout_dirs,
    )


def test_pull_unpack_and_cache(tmp_path: Path, registry: Registry) -> None:
    ref = registry.busybox
    store = _store(tmp_path / "images", registry)
    image = store.ensure(ref, PullPolicy.IF_NOT_PRESENT)
    assert image.digest.startswith("sha256:")
    assert (image.rootfs / "bin" / "busybox").is_file()
    assert image.config.cmd == ["sh"]
    assert image.pulled_bytes > 100_000  # the busybox layer came over HTTP

    again = store.ensure(ref, PullPolicy.IF_NOT_PRESENT)
    assert again.digest == image.digest and again.pulled_bytes == 0 and again.pull_seconds == 0
    # A restarted agent finds its cache.
    reopened = _store(tmp_path / "images", registry)
    assert reopened.ensure(ref, PullPolicy.NEVER).digest == image.digest
    always = reopened.ensure(ref, PullPolicy.ALWAYS)
    assert always.digest == image.digest and always.pull_seconds > 0


def test_always_sees_a_moved_tag_if_not_present_does_not(
    tmp_path: Path, registry: Registry, busybox_layout: Path
) -> None:
    ref = registry.push(busybox_layout, "latest", "test/moving:v1")
    store = _store(tmp_path / "images", registry)
    first = store.ensure(ref, PullPolicy.IF_NOT_PRESENT)
    registry.push(busybox_layout, "nocmd", "test/moving:v1")  # the tag now names another image
    assert store.ensure(ref, PullPolicy.IF_NOT_PRESENT).digest == first.digest
    moved = store.ensure(ref, PullPolicy.ALWAYS)
    assert moved.digest != first.digest
    assert moved.config.cmd is None


def test_never_and_absent_images(tmp_path: Path, registry: Registry) -> None:
    store = _store(tmp_path / "images", registry)
    with pytest.raises(ImageNotPresent, match="imagePullPolicy is Never"):
        store.ensure(registry.busybox, PullPolicy.NEVER)
    with pytest.raises(ImagePullFailed, match="manifest unknown"):
        store.ensure(f"{registry.host}/test/nothing:here", PullPolicy.IF_NOT_PRESENT)


def test_tls_is_required_unless_the_registry_is_marked_insecure(tmp_path: Path, registry: Registry) -> None:
    store = ImageStore(tmp_path / "images", limit_bytes=1 << 30, insecure=lambda host: False)
    with pytest.raises(ImagePullFailed) as info:
        store.ensure(registry.busybox, PullPolicy.IF_NOT_PRESENT)
    assert "HTTP response to HTTPS client" in str(info.value)


def test_concurrent_requests_pull_once(tmp_path: Path, registry: Registry) -> None:
    store = _store(tmp_path / "images", registry)
    results: list[str] = []
    pulled: list[int] = []

    def pull() -> None:
        image = store.ensure(registry.busybox, PullPolicy.IF_NOT_PRESENT)
        results.append(image.digest)
        pulled.append(image.pulled_bytes)

    threads = [threading.Thread(target=pull) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 6
    assert sum(1 for p in pulled if p > 0) == 1
    assert len(list((tmp_path / "images" / "layouts").iterdir())) == 1


def test_eviction_keeps_images_in_use(tmp_path: Path, registry: Registry, busybox_layout: Path) -> None:
    other = registry.push(busybox_layout, "nocmd", "test/other:v1")
    in_use: set[str] = set()
    store = _store(tmp_path / "images", registry, limit=1, in_use=in_use)
    first = store.ensure(registry.busybox, PullPolicy.IF_NOT_PRESENT)
    assert first.rootfs.is_dir(), "the image just asked for is never evicted"
    store.release(first.digest)  # its sandbox is gone
    second = store.ensure(other, PullPolicy.IF_NOT_PRESENT)
    store.release(second.digest)
    assert second.rootfs.is_dir()
    assert not first.rootfs.exists(), "over the limit, the least recently used unused image goes"
    assert store.cached_digests() == {second.digest}
    in_use.add(second.digest)
    third = store.ensure(registry.busybox, PullPolicy.IF_NOT_PRESENT)
    assert third.rootfs.is_dir() and second.rootfs.is_dir(), "an image in use must not be evicted"


def test_oci_layout_on_the_node(tmp_path: Path, registry: Registry, busybox_layout: Path) -> None:
    store = _store(tmp_path / "images", registry, layout_dirs=(busybox_layout.parent, tmp_path))
    image = store.ensure(f"oci:{busybox_layout}:latest", PullPolicy.NEVER)
    assert (image.rootfs / "bin" / "sh").is_symlink()
    with pytest.raises(ImagePullFailed) as info:
        store.ensure(f"oci:{busybox_layout}:missing", PullPolicy.IF_NOT_PRESENT)
    assert "tag 'missing' not found" in str(info.value) and "latest" in str(info.value)
    broken = tmp_path / "broken"
    run(["umoci", "init", "--layout", str(broken)])
    with pytest.raises(ImagePullFailed, match="tags: none"):
        store.ensure(f"oci:{broken}:x", PullPolicy.IF_NOT_PRESENT)


def test_two_tags_of_one_digest_unpack_once(
    tmp_path: Path, registry: Registry, busybox_layout: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two references, so two pull flights at once; one digest, so one unpack that neither
    replaces under the other."""
    refs = [registry.push(busybox_layout, "latest", f"test/twin:{tag}") for tag in ("a", "b")]
    store = _store(tmp_path / "images", registry)
    barrier = threading.Barrier(len(refs))
    images: list[Image] = []

    def pull(ref: str) -> None:
        barrier.wait()
        images.append(store.ensure(ref, PullPolicy.IF_NOT_PRESENT))

    caplog.set_level(logging.INFO, logger="vmsandbox.node_agent.images")
    threads = [threading.Thread(target=pull, args=(ref,)) for ref in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(images) == 2 and images[0].digest == images[1].digest
    assert images[0].rootfs == images[1].rootfs and (images[0].rootfs / "bin" / "busybox").is_file()
    unpacks = [r for r in caplog.records if r.getMessage().startswith("unpacked ")]
    assert len(unpacks) == 1, [r.getMessage() for r in unpacks]
    assert not [p for p in (tmp_path / "images" / "rootfs").iterdir() if p.name.startswith(".")]


def test_an_image_between_pull_and_launch_is_not_evicted(
    tmp_path: Path, registry: Registry, busybox_layout: Path
) -> None:
    """No record names the first image yet (its sandbox is still being set up): another pull
    over the limit must leave it alone until the caller releases it."""
    other = registry.push(busybox_layout, "nocmd", "test/other:v2")
    store = _store(tmp_path / "images", registry, limit=1)
    first = store.ensure(registry.busybox, PullPolicy.IF_NOT_PRESENT)
    second = store.ensure(other, PullPolicy.IF_NOT_PRESENT)
    assert first.rootfs.is_dir() and second.rootfs.is_dir()
    store.release(first.digest)
    store.release(second.digest)
    third = store.ensure(other, PullPolicy.IF_NOT_PRESENT)
    assert not first.rootfs.exists(), "released and over the limit, it goes"
    assert third.rootfs.is_dir()
