"""Files inside a running container's root through the guest agent: read, write, list, tar streams."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.exec.conftest import Sandbox
from vmsandbox.runtime.errors import BadPath
from vmsandbox.runtime.streams import list_path, read_path, write_path

MiB = 1024 * 1024


def _pieces(data: bytes, size: int = 1 * MiB) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read_all(sandbox: Sandbox, path: str) -> tuple[str, bytes]:
    with read_path(sandbox.agent, sandbox.id, path) as stream:
        return stream.kind, b"".join(stream.chunks())


def test_a_100_mib_file_round_trips_byte_identical(sandbox: Sandbox) -> None:
    data = os.urandom(100 * MiB)
    write_path(sandbox.agent, sandbox.id, "/tmp/big.bin", _pieces(data), mode=0o640)
    on_disk = sandbox.rootfs / "tmp" / "big.bin"
    assert on_disk.stat().st_mode & 0o7777 == 0o640
    kind, back = read_all(sandbox, "/tmp/big.bin")
    assert kind == "file"
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    on_disk.unlink()


def test_an_open_file_is_sent_from_its_position(sandbox: Sandbox, tmp_path: Path) -> None:
    """A file object goes by sendfile from where it stands; one without a descriptor is read."""
    data = os.urandom(3 * MiB + 17)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    with local.open("rb") as file:
        file.seek(MiB + 1)
        write_path(sandbox.agent, sandbox.id, "/tmp/sent.bin", file)
    assert read_all(sandbox, "/tmp/sent.bin") == ("file", data[MiB + 1 :])
    write_path(sandbox.agent, sandbox.id, "/tmp/buffered.bin", io.BytesIO(data))
    assert read_all(sandbox, "/tmp/buffered.bin") == ("file", data)
    for name in ("sent.bin", "buffered.bin"):
        (sandbox.rootfs / "tmp" / name).unlink()


def _tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return out


def test_a_directory_tree_round_trips_through_tar(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "deep.txt").write_bytes(b"deep\n")
    (src / "top.bin").write_bytes(os.urandom(300_000))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "empty").mkdir()
    (src / "link").symlink_to("a/b/deep.txt")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path in sorted(src.iterdir()):
            tar.add(path, arcname=path.name)
    write_path(sandbox.agent, sandbox.id, "/srv/tree", _pieces(archive.getvalue(), 4096), kind="tar")
    assert _tree(sandbox.rootfs / "srv" / "tree") == _tree(src)

    kind, stream = read_all(sandbox, "/srv/tree")
    assert kind == "dir"
    back = tmp_path / "back"
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        tar.extractall(back, filter="tar")
    assert _tree(back) == _tree(src)
    names = [e.name for e in list_path(sandbox.agent, sandbox.id, "/srv/tree")]
    assert names == ["a", "empty", "link", "run.sh", "top.bin"]
    entries = {e.name: e for e in list_path(sandbox.agent, sandbox.id, "/srv/tree")}
    assert (entries["link"].kind, entries["link"].target) == ("symlink", "a/b/deep.txt")
    assert (entries["top.bin"].kind, entries["top.bin"].size) == ("file", 300_000)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A file outside the container root, with a name any escape would reach."""
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    yield secret


def test_dotdot_and_symlinks_stay_inside_the_root(sandbox: Sandbox, outside: Path) -> None:
    rootfs = sandbox.rootfs
    (rootfs / "tmp" / "abs").unlink(missing_ok=True)
    (rootfs / "tmp" / "abs").symlink_to(str(outside))
    (rootfs / "tmp" / "up").unlink(missing_ok=True)
    (rootfs / "tmp" / "up").symlink_to("../../../../../../../../" + str(outside).lstrip("/"))
    (rootfs / "tmp" / "dir").unlink(missing_ok=True)
    (rootfs / "tmp" / "dir").symlink_to(str(outside.parent))
    for path in (
        "/tmp/abs",
        "/tmp/up",
        "/tmp/dir/secret",
        "/../../../../" + str(outside),
        "/tmp/dir/../secret",
    ):
        with pytest.raises(BadPath, match="No such file"):
            read_all(sandbox, path)
    # A symlink's absolute target is the container's: /tmp/abs -> <that path inside the root>.
    inside = rootfs / str(outside).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text("container file\n")
    assert read_all(sandbox, "/tmp/abs") == ("file", b"container file\n")
    assert read_all(sandbox, "/tmp/up") == ("file", b"container file\n")
    # Writing through the same links lands inside the root too; the host file is untouched.
    write_path(sandbox.agent, sandbox.id, "/tmp/dir/secret", [b"written\n"])
    write_path(sandbox.agent, sandbox.id, "/../../tmp/dir/../secret2", [b"two\n"])
    assert outside.read_text() == "host secret\n"
    # ".." after a symlink climbs from the link's target, as the kernel would, within the root.
    assert not (outside.parent.parent / "secret2").exists()
    assert inside.read_text() == "written\n"
    assert (inside.parent.parent / "secret2").read_text() == "two\n"


def test_tar_members_cannot_climb_out(sandbox: Sandbox, outside: Path) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(BadPath, match=r"'\.\.' is not allowed"):
        write_path(sandbox.agent, sandbox.id, "/tmp/x", [archive.getvalue()], kind="tar")
    # A symlink member followed by a file through it: the file lands inside the root.
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        link = tarfile.TarInfo("hop")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside.parent)
        tar.addfile(link)
        info = tarfile.TarInfo("hop/planted")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"plant"))
    (sandbox.rootfs / str(outside.parent).lstrip("/")).mkdir(parents=True, exist_ok=True)
    write_path(sandbox.agent, sandbox.id, "/tmp/t3", [archive.getvalue()], kind="tar")
    assert not (outside.parent / "planted").exists()
    assert (sandbox.rootfs / str(outside.parent).lstrip("/") / "planted").read_bytes() == b"plant"


def test_missing_paths_and_devices_are_clear_errors(sandbox: Sandbox) -> None:
    with pytest.raises(BadPath, match="/nope/file: No such file"):
        read_all(sandbox, "/nope/file")
    with pytest.raises(BadPath, match="path: /dev/null: not a regular file or directory"):
        read_all(sandbox, "/dev/null")
    with pytest.raises(BadPath, match="is a directory"):
        write_path(sandbox.agent, sandbox.id, "/tmp", [b"x"])
