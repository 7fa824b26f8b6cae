"""The process backend on an image's one unpacked tree: each container writes to its own overlay.

Real containers (runc through the process backend's agent) write, delete and append; a sibling
of the same image, in another sandbox or in the same one, sees none of it; the cached tree is
byte-for-byte unchanged; and deleting a container leaves no overlay mounted anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.leaks import processes_mentioning
from tests.runtime.support import make_rootfs, short_root
from tests.runtime.test_lifecycle import relay_status
from tests.tools import require_tools
from vmsandbox.api import parse_sandbox
from vmsandbox.guest.disks import RootfsError, prepare_rootfs
from vmsandbox.guest.protocol import HostPath
from vmsandbox.node_agent.bundle import build_bundle
from vmsandbox.node_agent.errors import InvalidImage
from vmsandbox.node_agent.images import Image, ImageConfig
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.diskcache import tree_fingerprint

#: The tests reap relays with waitpid, as a runc-style caller does.
pytestmark = pytest.mark.usefixtures("subreaper")

DIGEST = "sha256:" + "12" * 32
CRI_SANDBOX = {"io.kubernetes.cri.container-type": "sandbox"}
WRITE = "echo tenant > /etc/motd && rm /bin/cat && chmod 0700 /etc && echo new > /etc/new && cat /etc/motd"
LOOK = "cat /etc/motd; ls /etc/new /bin/cat 2>&1; /bin/busybox true && echo busybox-intact"


def _sandbox(name: str, script: str) -> Any:
    return parse_sandbox(
        {
            "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}"},
            "spec": {"image": "busybox", "command": ["/bin/sh", "-c", script]},
        }
    )


def _overlays(mountinfo: str, lower: Path) -> list[str]:
    with open(mountinfo) as info:
        return [line for line in info if " overlay " in line and str(lower) in line]


def _content(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
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
    require_tools("runc")
    root = short_root()
    runtime = Runtime(root=root, hypervisor="process")
    try:
        yield runtime
    finally:
        for state in sorted(runtime.list(), key=lambda s: runtime.store.load(s.id).kind != "container"):
            runtime.delete(state.id, force=True)
        assert processes_mentioning(str(root)) == []
        shutil.rmtree(root, ignore_errors=True)


def _bundle(where: Path, image: Image, script: str, annotations: dict[str, str] | None = None) -> Path:
    bundle = build_bundle(where, _sandbox(where.parent.name, script), image)
    if annotations:
        config = json.loads((bundle / "config.json").read_text())
        config["annotations"] = {**config.get("annotations", {}), **annotations}
        (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _run(rt: Runtime, cid: str, bundle: Path, out: Path) -> str:
    with out.open("wb") as o:
        state = rt.create(cid, bundle, stdio=(0, o.fileno(), o.fileno()), image_digest=DIGEST)
        rt.start(cid)
        assert relay_status(state.pid) == 0
    return out.read_text()


def test_sandboxes_of_one_image_keep_their_writes_apart_and_the_tree_unchanged(
    rt: Runtime, image: Image, tmp_path: Path
) -> None:
    fingerprint, content = tree_fingerprint(image.rootfs), _content(image.rootfs)
    writer = _bundle(tmp_path / "a" / "bundle", image, WRITE)
    reader = _bundle(tmp_path / "b" / "bundle", image, LOOK)
    assert (writer / "rootfs").resolve() == image.rootfs  # shared, not copied

    assert _run(rt, "wr", writer, tmp_path / "w.out") == "tenant\n"
    seen = _run(rt, "rd", reader, tmp_path / "r.out")
    assert seen.startswith("image\n") and "/etc/new: No such file" in seen, seen
    assert "/bin/cat\n" in seen and "busybox-intact" in seen, seen

    assert (image.rootfs / "etc" / "motd").read_text() == "image\n"
    assert (image.rootfs / "etc").stat().st_mode & 0o777 == 0o755
    assert tree_fingerprint(image.rootfs) == fingerprint and _content(image.rootfs) == content
    for cid in ("wr", "rd"):
        rt.delete(cid)
    assert _overlays("/proc/self/mountinfo", image.rootfs) == []
    assert _content(image.rootfs) == content


def test_pod_members_of_one_agent_get_their_own_overlays_and_delete_unmounts_them(
    rt: Runtime, image: Image, tmp_path: Path
) -> None:
    content = _content(image.rootfs)
    rt.create(
        "pod", _bundle(tmp_path / "pod" / "bundle", image, "sleep 100", CRI_SANDBOX), image_digest=DIGEST
    )
    rt.start("pod")
    member = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod"}
    vm = rt.store.load("pod").state.vm
    assert vm is not None
    agents = [int(line.split(":")[0]) for line in processes_mentioning(str(vm.state_dir))]
    mountinfo = next(
        f"/proc/{pid}/mountinfo" for pid in agents if _overlays(f"/proc/{pid}/mountinfo", image.rootfs)
    )
    assert len(_overlays(mountinfo, image.rootfs)) == 1  # the pod's own container
    assert (
        _run(rt, "m1", _bundle(tmp_path / "m1" / "bundle", image, WRITE, member), tmp_path / "1")
        == "tenant\n"
    )
    assert len(_overlays(mountinfo, image.rootfs)) == 2
    upper = [p for p in vm.state_dir.rglob("upper") if (p / "etc" / "motd").is_file()]
    assert len(upper) == 1 and (upper[0] / "etc" / "motd").read_text() == "tenant\n"  # in the sandbox's dir
    rt.delete("m1")
    assert len(_overlays(mountinfo, image.rootfs)) == 1
    seen = _run(rt, "m2", _bundle(tmp_path / "m2" / "bundle", image, LOOK, member), tmp_path / "2")
    assert seen.startswith("image\n") and "/etc/new: No such file" in seen, seen
    rt.delete("m2")
    assert len(_overlays(mountinfo, image.rootfs)) == 1
    assert _content(image.rootfs) == content


def test_overlay_release_leaves_no_mount_and_odd_layer_paths_are_refused(
    image: Image, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prepared = prepare_rootfs(HostPath(path=str(image.rootfs), overlay=True), str(work))
    (Path(prepared.path) / "etc" / "motd").write_text("mine\n")
    assert (image.rootfs / "etc" / "motd").read_text() == "image\n"
    assert len(_overlays("/proc/self/mountinfo", image.rootfs)) == 1
    prepared.release()
    assert _overlays("/proc/self/mountinfo", image.rootfs) == []

    odd = tmp_path / "a,upperdir=x"
    shutil.copytree(image.rootfs, odd, symlinks=True)
    (tmp_path / "w2").mkdir()
    with pytest.raises(RootfsError, match="cannot be an overlay layer"):
        prepare_rootfs(HostPath(path=str(odd), overlay=True), str(tmp_path / "w2"))
    assert _overlays("/proc/self/mountinfo", odd) == []


def test_without_the_image_digest_the_bundle_rootfs_is_used_as_is(rt: Runtime, tmp_path: Path) -> None:
    """A plain OCI bundle (a shim's private snapshot): the container writes to it, as with runc."""
    own = make_rootfs(tmp_path / "own")
    (own / "etc").mkdir()
    image = Image(reference="x", digest=DIGEST, rootfs=own, config=ImageConfig())
    bundle = _bundle(tmp_path / "p" / "bundle", image, "echo direct > /etc/direct")
    with (tmp_path / "out").open("wb") as o:
        state = rt.create("plain", bundle, stdio=(0, o.fileno(), o.fileno()))
        rt.start("plain")
        assert relay_status(state.pid) == 0
    assert (own / "etc" / "direct").read_text() == "direct\n"


def test_a_refused_config_leaves_no_bundle(image: Image, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bad = parse_sandbox(
        {"metadata": {"name": "x", "namespace": "ns", "uid": "u-x"}, "spec": {"image": "busybox"}}
    )
    with pytest.raises(InvalidImage):  # no command, and the image has none
        build_bundle(bundle, bad, image)
    assert not bundle.exists()
