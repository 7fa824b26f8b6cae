"""The shared per-image root disk: its key, single-flight making, sharing, isolation and eviction."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.conftest import BundleFactory, assert_no_leaks, cri_container
from tests.runtime.support import make_rootfs
from tests.runtime.test_lifecycle import relay_status
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.process import ProcessDriver
from vmsandbox.runtime import Runtime, diskcache
from vmsandbox.runtime.diskcache import DISK_FORMAT, DiskCache, disk_key, tree_fingerprint
from vmsandbox.runtime.errors import RuntimeError_

DIGEST = "sha256:" + "ab" * 32


class _DiskOnlyDriver(ProcessDriver):
    """The process backend told not to share the host fs: the runtime ships disks instead."""

    shares_host_fs = False


def _writable(config: dict[str, Any]) -> None:
    """The session's one rootfs, but a container that may write to it (its own copy of it)."""
    config["root"]["readonly"] = False


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


# ---- the key ---------------------------------------------------------------------------


def test_the_key_is_the_digest_when_known_and_names_the_format(tree: Path, tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "disks", in_use=set)
    assert disk_key(tree, DIGEST) == "image-" + "ab" * 32
    assert cache.path(disk_key(tree, DIGEST)).name == f"image-{'ab' * 32}.v{DISK_FORMAT}.ext4"
    for bad in ("sha256:../../etc", "sha512:" + "a" * 128, "ab" * 32, "sha256:" + "AB" * 32):
        with pytest.raises(RuntimeError_, match="not a sha256 digest"):
            disk_key(tree, bad)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: (t / "bin" / "busybox").open("r+b").write(b"\x7f"),  # same size, same bytes even
        lambda t: os.chmod(t / "bin" / "busybox", 0o700),
        lambda t: os.utime(t / "bin" / "busybox", (0, 0)),
        lambda t: (t / "etc").mkdir(),
        lambda t: (t / "bin" / "cat").unlink(),
        lambda t: os.rename(t / "tmp", t / "tmq"),
    ],
    ids=["rewrite", "chmod", "mtime-set-back", "mkdir", "unlink", "rename"],
)
def test_any_change_to_the_tree_changes_its_fingerprint(tree: Path, change: object) -> None:
    before = tree_fingerprint(tree)
    assert tree_fingerprint(tree) == before
    time.sleep(0.01)
    change(tree)  # type: ignore[operator]
    assert tree_fingerprint(tree) != before


def test_an_identical_copy_elsewhere_is_a_different_key(tree: Path, tmp_path: Path) -> None:
    other = make_rootfs(tmp_path / "other")
    assert tree_fingerprint(tree) != tree_fingerprint(other)


# ---- making ----------------------------------------------------------------------------


def test_made_once_read_only_and_reused(tree: Path, tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "disks", in_use=set)
    first = cache.get(tree, DIGEST)
    assert first.stat().st_mode & 0o777 == 0o444
    ino, digest = first.stat().st_ino, _sha(first)
    assert cache.get(tree, DIGEST) == first
    assert first.stat().st_ino == ino and _sha(first) == digest
    assert cache.get(tree) != first  # no digest: keyed by the tree instead
    assert sorted(p.name for p in cache.root.iterdir() if not p.name.startswith(".")) == sorted(
        [first.name, cache.get(tree).name]
    )


def test_concurrent_makers_of_one_key_run_mkfs_once(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = diskcache.make_disk, []

    def counting(rootfs: Path, image: Path) -> Path:
        calls.append(image)
        time.sleep(0.2)  # widen the window for the others to pile up
        return real(rootfs, image)

    monkeypatch.setattr(diskcache, "make_disk", counting)
    cache = DiskCache(tmp_path / "disks", in_use=set)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(tree, DIGEST))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(got)) == 1 and len(got) == 6
    assert [p.name for p in cache.root.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_mkfs_leaves_no_disk_and_the_next_try_makes_one(tree: Path, tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "disks", in_use=set)
    missing = tmp_path / "missing"
    with pytest.raises(RuntimeError_, match=r"mkfs\.ext4"):
        cache.get(missing, DIGEST)
    assert [p for p in cache.root.iterdir() if not p.name.endswith(".lock")] == []
    assert cache.get(tree, DIGEST).is_file()


def test_a_tree_changed_while_its_disk_is_made_is_not_cached_under_the_old_key(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = diskcache.make_disk

    def racing(rootfs: Path, image: Path) -> Path:
        made = real(rootfs, image)
        (rootfs / "late").write_text("written during mkfs\n")
        return made

    monkeypatch.setattr(diskcache, "make_disk", racing)
    cache = DiskCache(tmp_path / "disks", in_use=set)
    with pytest.raises(RuntimeError_, match="changed while its disk was made"):
        cache.get(tree)
    assert [p for p in cache.root.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(diskcache, "make_disk", real)
    assert cache.get(tree).is_file()  # the tree as it is now


# ---- eviction --------------------------------------------------------------------------


def test_eviction_spares_disks_in_use_and_recently_handed_out(tree: Path, tmp_path: Path) -> None:
    users: set[str] = set()
    cache = DiskCache(tmp_path / "disks", in_use=lambda: set(users), keep=0)
    used = cache.get(tree, DIGEST)
    idle = cache.get(tree, "sha256:" + "cd" * 32)
    assert cache.evict() == []  # both handed out just now: a create may not have recorded them
    old = time.time() - 2 * diskcache.RECENT_S
    for disk in (used, idle):
        os.utime(disk, (old, old))
    users.add(str(used))
    assert cache.evict() == [idle]
    assert used.is_file() and not idle.exists()
    users.clear()
    assert cache.evict() == [used]


# ---- through the runtime ---------------------------------------------------------------


def test_sandboxes_of_one_rootfs_share_one_disk_and_keep_their_writes_apart(
    rt: Runtime, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    """One mkfs for three containers; a write in one is not seen by its sibling; the disk is unchanged."""
    rt._drivers["process"] = _DiskOnlyDriver(HypervisorConfig())
    rt.create("s1", make_bundle(["sleep", "100"], edit=_writable))
    disk = Path(rt.store.load("s1").disk_image or "")
    assert disk.parent == rt.root / ".disks"
    before = _sha(disk)
    out = tmp_path / "out"
    with out.open("wb") as o:
        writer = rt.create(
            "w1",
            make_bundle(
                [
                    "sh",
                    "-c",
                    "echo tenant > /bin/note && echo x > /tmp/mine && cat /bin/note",
                ],
                edit=_writable,
                annotations=cri_container("s1"),
            ),
            stdio=(0, o.fileno(), o.fileno()),
        )
        rt.start("w1")
        assert relay_status(writer.pid) == 0
    assert out.read_bytes() == b"tenant\n"
    with out.open("wb") as o:
        reader = rt.create(
            "r1",
            make_bundle(
                ["sh", "-c", "ls /bin/note /tmp/mine 2>&1; true"],
                edit=_writable,
                annotations=cri_container("s1"),
            ),
            stdio=(0, o.fileno(), o.fileno()),
        )
        rt.start("r1")
        assert relay_status(reader.pid) == 0
    assert b"No such file" in out.read_bytes()
    assert [rt.store.load(c).disk_image for c in ("s1", "w1", "r1")] == [str(disk)] * 3
    assert _sha(disk) == before
    for cid in ("w1", "r1", "s1"):
        rt.delete(cid, force=True)
    assert disk.is_file() and _sha(disk) == before  # cached for the next sandbox of the image
    assert [p.name for p in (rt.root / ".disks").iterdir() if not p.name.startswith(".")] == [disk.name]
    assert_no_leaks(rt.root)


def test_the_node_agent_keys_the_disk_by_the_image_digest(
    rt: Runtime, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    rt._drivers["process"] = _DiskOnlyDriver(HypervisorConfig())
    rt.create("d1", make_bundle(["true"], writable=True), image_digest=DIGEST)
    assert Path(rt.store.load("d1").disk_image or "").name == f"image-{'ab' * 32}.v{DISK_FORMAT}.ext4"
    rt.delete("d1", force=True)
    with pytest.raises(RuntimeError_, match="not a sha256 digest"):
        rt.create("d2", make_bundle(["true"], writable=True), image_digest="sha256:../x")
    assert_no_leaks(rt.root)
