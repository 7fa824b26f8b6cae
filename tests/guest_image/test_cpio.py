"""The newc writer, checked by reading its archives back with GNU cpio."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from vmsandbox.guest.image import cpio


def _listing(archive: Path) -> list[str]:
    data = gzip.decompress(archive.read_bytes())
    done = subprocess.run(
        ["cpio", "-t", "-v", "--quiet", "--numeric-uid-gid"], input=data, capture_output=True, check=True
    )
    return done.stdout.decode().splitlines()


def test_archive_reads_back_with_types_modes_owners_and_content(tmp_path: Path) -> None:
    archive = tmp_path / "initramfs.img"
    payload = b"#!/bin/sh\necho odd-length\n"
    cpio.write_gzipped(
        archive,
        [
            cpio.directory("bin"),
            cpio.directory("dev"),
            cpio.char_device("dev/console", 5, 1),
            cpio.regular("init", payload, 0o755),
            cpio.symlink("bin/sh", "busybox"),
        ],
    )
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in _listing(archive)}
    assert set(lines) == {"bin", "dev", "dev/console", "init", "bin/sh"}
    assert lines["dev/console"].startswith("crw-------")
    assert lines["dev/console"].split()[4:6] == ["5,", "1"]
    assert lines["init"].startswith("-rwxr-xr-x")
    assert lines["bin/sh"].startswith("lrwxrwxrwx") and lines["bin/sh"].endswith("-> busybox")
    for line in lines.values():
        assert line.split()[2:4] == ["0", "0"], f"not owned by root: {line}"

    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-i", "--quiet", "init"],
        input=gzip.decompress(archive.read_bytes()),
        cwd=out,
        check=True,
    )
    assert (out / "init").read_bytes() == payload


def test_output_is_reproducible(tmp_path: Path) -> None:
    entries = [cpio.directory("etc"), cpio.regular("etc/x", b"abc")]
    cpio.write_gzipped(tmp_path / "a", entries)
    cpio.write_gzipped(tmp_path / "b", entries)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5])
def test_alignment_for_every_padding_length(tmp_path: Path, size: int) -> None:
    name = "f" * (size + 1)
    cpio.write_gzipped(tmp_path / "a", [cpio.regular(name, b"z" * size), cpio.regular("after", b"ok")])
    listed = [line.split()[-1] for line in _listing(tmp_path / "a")]
    assert listed == [name, "after"]


def test_tree_entries_lists_parents_first(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/file").write_text("1")
    (root / "a-c").write_text("2")
    (root / "a/link").symlink_to("b/file")
    paths = [entry.path for entry in cpio.tree_entries(root, "lib")]
    assert paths.index("lib/a") < paths.index("lib/a/b") < paths.index("lib/a/b/file")
    assert "lib/a/link" in paths
