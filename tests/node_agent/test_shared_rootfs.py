"""The process backend's bundles: the image's one unpacked tree under a per-sandbox overlay.

Real containers (runc through the process backend) write, delete and append in one sandbox;
a sibling of the same image sees none of it, the cached tree is byte-for-byte unchanged, and
removing a bundle leaves no mount and no directory behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.leaks import processes_mentioning
from tests.runtime.support import make_rootfs, short_root
from tests.runtime.test_lifecycle import relay_status
from vmsandbox.api import parse_sandbox
from vmsandbox.node_agent.bundle import build_bundle
from vmsandbox.node_agent.errors import BundleFailed, InvalidImage
from vmsandbox.node_agent.images import Image, ImageConfig
from vmsandbox.node_agent.overlay import mount_overlay, remove_bundle
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.diskcache import tree_fingerprint

DIGEST = "sha256:" + "12" * 32


def _sandbox(name: str, script: str) -> Any:
    return parse_sandbox(
        {
            "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}"},
            "spec": {"image": "busybox", "command": ["/bin/sh", "-c", script]},
        }
    )


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [line for line in info if f" {path}" in line]


def _digest_of_tree(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode())
            h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def image(tmp_path: Path) -> Image:
    rootfs = make_rootfs(tmp_path / "cache" / "rootfs")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "motd").write_text("image\n")
    return Image(reference="busybox", digest=DIGEST, rootfs=rootfs, config=ImageConfig())


@pytest.fixture
def rt() -> Iterator[Runtime]:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    root = short_root()
    runtime = Runtime(root=root, hypervisor="process")
    try:
        yield runtime
    finally:
        for state in runtime.list():
            runtime.delete(state.id, force=True)
        assert processes_mentioning(str(root)) == []
        shutil.rmtree(root, ignore_errors=True)


def _run(rt: Runtime, cid: str, bundle: Path, out: Path) -> bytes:
    with out.open("wb") as o:
        state = rt.create(cid, bundle, stdio=(0, o.fileno(), o.fileno()), image_digest=DIGEST)
        rt.start(cid)
        assert relay_status(state.pid) == 0
    rt.delete(cid)
    return out.read_bytes()


def test_a_write_in_one_sandbox_is_not_seen_by_a_sibling_and_the_tree_is_unchanged(
    rt: Runtime, image: Image, tmp_path: Path
) -> None:
    tree_before, bytes_before = tree_fingerprint(image.rootfs), _digest_of_tree(image.rootfs)
    writer = tmp_path / "a" / "bundle"
    reader = tmp_path / "b" / "bundle"
    script = "echo tenant > /etc/motd && echo x >> /bin/busybox.note && rm /bin/cat && echo new > /etc/new"
    build_bundle(writer, _sandbox("a", script + " && cat /etc/motd"), image)
    build_bundle(reader, _sandbox("b", "cat /etc/motd; ls /etc/new /bin/cat 2>&1; true"), image)
    assert os.path.ismount(writer / "rootfs") and os.path.ismount(reader / "rootfs")

    assert _run(rt, "wr", writer, tmp_path / "w.out") == b"tenant\n"
    assert (writer / "upper" / "etc" / "motd").read_text() == "tenant\n"  # the write is the bundle's own
    seen = _run(rt, "rd", reader, tmp_path / "r.out").decode()
    assert seen.startswith("image\n") and "/etc/new: No such file" in seen and "/bin/cat\n" in seen

    assert (image.rootfs / "etc" / "motd").read_text() == "image\n"
    assert (image.rootfs / "bin" / "cat").is_symlink() and not (image.rootfs / "etc" / "new").exists()
    assert tree_fingerprint(image.rootfs) == tree_before and _digest_of_tree(image.rootfs) == bytes_before

    for bundle in (writer, reader):
        remove_bundle(bundle)
        assert not bundle.exists()
        assert _mounts_under(bundle) == []
    assert _digest_of_tree(image.rootfs) == bytes_before


def test_a_rebuilt_bundle_starts_from_the_image_again(image: Image, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    build_bundle(bundle, _sandbox("a", "true"), image)
    (bundle / "rootfs" / "etc" / "motd").write_text("changed\n")
    build_bundle(bundle, _sandbox("a", "true"), image)  # a restart: the old overlay goes first
    assert (bundle / "rootfs" / "etc" / "motd").read_text() == "image\n"
    assert len(_mounts_under(bundle / "rootfs")) == 1
    remove_bundle(bundle)
    assert _mounts_under(bundle) == [] and not bundle.exists()
    assert (image.rootfs / "etc" / "motd").read_text() == "image\n"


def test_a_failed_config_unmounts_and_removes_the_bundle(image: Image, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bad = parse_sandbox(
        {"metadata": {"name": "x", "namespace": "ns", "uid": "u-x"}, "spec": {"image": "busybox"}}
    )  # no command and the image has none: build_config refuses
    with pytest.raises(InvalidImage):
        build_bundle(bundle, bad, image)
    assert _mounts_under(bundle) == [] and not bundle.exists()


def test_layer_paths_the_option_string_could_misread_are_refused(tmp_path: Path) -> None:
    lower = tmp_path / "a,upperdir=x"
    lower.mkdir()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with pytest.raises(BundleFailed, match="cannot be an overlay layer"):
        mount_overlay(lower, bundle)
    assert _mounts_under(bundle) == []


def test_removing_a_sandbox_record_unmounts_its_bundle(image: Image, tmp_path: Path) -> None:
    from vmsandbox.node_agent.records import RecordStore

    records = RecordStore(tmp_path / "records")
    build_bundle(records.bundle_dir("u1"), _sandbox("a", "true"), image)
    assert os.path.ismount(records.bundle_dir("u1") / "rootfs")
    records.remove("u1")
    assert _mounts_under(tmp_path / "records") == [] and not records.dir_for("u1").exists()
