"""A real build from Debian packages: artifacts, their content, caching and failures."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from tests.guest_image.conftest import CleanBuild
from tests.leaks import processes_mentioning
from vmsandbox.guest.image.build import build
from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.fsutil import mounts_under
from vmsandbox.guest.image.manifest import ARTIFACT_NAMES, Manifest

pytestmark = [pytest.mark.guest_image, pytest.mark.timeout(1800)]

MiB = 1024 * 1024


def _cache_listing(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != ".lock")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _debugfs(image: Path, command: str) -> str:
    done = subprocess.run(["debugfs", "-R", command, str(image)], capture_output=True, text=True, check=True)
    return done.stdout


def _names(image: Path, directory: str) -> list[str]:
    """Entries of a directory in the image (``ls -p`` lines are /inode/mode/uid/gid/name/size/)."""
    lines = _debugfs(image, f"ls -p {directory}").splitlines()
    names = [line.split("/")[5] for line in lines if line.startswith("/")]
    return [name for name in names if name not in (".", "..")]


def test_clean_build_publishes_artifacts_matching_the_manifest(clean_build: CleanBuild) -> None:
    result, out = clean_build.result, clean_build.out
    assert not result.cached
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ARTIFACT_NAMES:
        path = out / name
        assert path.is_file(), f"{name} missing"
        assert manifest["artifacts"][name] == {"size": path.stat().st_size, "sha256": _sha256(path)}
    sizes = {name: (out / name).stat().st_size for name in ARTIFACT_NAMES}
    assert 4 * MiB < sizes["vmlinuz"] < 64 * MiB
    assert 256 * 1024 < sizes["initramfs.img"] < 16 * MiB
    assert sizes["rootfs.img"] <= 150 * MiB, f"rootfs.img is {sizes['rootfs.img'] / MiB:.1f} MiB"

    assert re.fullmatch(r"linux-image-.*-cloud-amd64", manifest["kernel"]["name"])
    assert manifest["busybox"]["name"] == "busybox-static"
    installed = {p["name"]: p["version"] for p in manifest["rootfs_packages"]}
    assert {"python3", "python3.11", "crun", "runc", "busybox-static", "libc6"} <= set(installed)
    assert manifest["python_packages"] == [], "the guest agent is standard library only"
    assert manifest["builtin_modules"] == ["ext4"]
    assert manifest["initramfs_modules"].index("virtio") < manifest["initramfs_modules"].index("virtio_pci")
    assert _cache_listing(clean_build.cache) == [f"image-{result.manifest.cache_key}"]


def test_initramfs_holds_init_busybox_console_and_the_listed_modules(
    clean_build: CleanBuild, tmp_path: Path
) -> None:
    data = gzip.decompress((clean_build.out / "initramfs.img").read_bytes())
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    members = set(listing.stdout.decode().split())
    assert {"init", "bin/busybox", "dev/console", "etc/vmsandbox/modules", "newroot"} <= members

    workdir = tmp_path / "initramfs"
    workdir.mkdir()
    wanted = ["init", "etc/vmsandbox/modules"]
    subprocess.run(
        ["cpio", "-i", "--quiet", "--make-directories", *wanted], input=data, cwd=workdir, check=True
    )
    packaged = resources.files("vmsandbox.guest.image").joinpath("init.sh").read_bytes()
    assert (workdir / "init").read_bytes() == packaged
    lines = (workdir / "etc/vmsandbox/modules").read_text().splitlines()
    load_list = [line.split()[0] for line in lines]
    only_with = {Path(line.split()[0]).name: line.split()[1] for line in lines if len(line.split()) > 1}
    assert only_with == {
        "virtio_console.ko": "3",
        "vsock.ko": "19",
        "vmw_vsock_virtio_transport_common.ko": "19",
        "vmw_vsock_virtio_transport.ko": "19",
        "virtio-rng.ko": "4",
    }, "a device's driver is listed with the virtio device type it drives"
    release = clean_build.result.manifest.kernel_release
    assert [Path(p).name.removesuffix(".ko").replace("-", "_") for p in load_list] == (
        clean_build.result.manifest.initramfs_modules
    )
    for path in load_list:
        assert path.startswith(f"/lib/modules/{release}/")
        assert path.lstrip("/") in members, f"{path} is listed but not in the archive"


def test_rootfs_is_a_trimmed_ext4_with_python_crun_runc_and_the_agent(clean_build: CleanBuild) -> None:
    image = clean_build.out / "rootfs.img"
    header = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Filesystem volume name:\s+vmsb-root", header)
    assert "extent" in header

    agent_path = "/usr/lib/vmsandbox/python"
    for path in ("/usr/bin/python3.11", "/usr/bin/crun", "/usr/sbin/runc", "/usr/bin/busybox"):
        assert "Type: regular" in _debugfs(image, f"stat {path}"), f"{path} missing"
    assert _names(image, "/usr/lib/vmsandbox") == ["python"], "init starts the agent itself, as PID 1"
    agent = _names(image, f"{agent_path}/vmsandbox/guest")
    assert "__main__.py" in agent
    assert "image" not in agent, "the image builder itself was copied into the guest"
    assert "errors.py" in _names(image, f"{agent_path}/vmsandbox")
    compiled = _names(image, f"{agent_path}/vmsandbox/guest/__pycache__")
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    assert {f"{m}.{tag}.pyc" for m in ("__main__", "agent", "protocol", "wire", "mux")} <= set(compiled)
    stdlib = _names(image, "/usr/lib/python3.11/__pycache__")
    assert {f"{m}.{tag}.pyc" for m in ("subprocess", "argparse", "threading")} <= set(stdlib)
    assert _names(image, "/usr/local/lib/python3.11/dist-packages") == [], "no wheels in the guest"
    for trimmed in ("/usr/share/man", "/var/lib/apt/lists", "/usr/lib/x86_64-linux-gnu/gconv"):
        assert _names(image, trimmed) == [], f"{trimmed} was not trimmed"


def test_unchanged_inputs_reuse_the_cache(clean_build: CleanBuild) -> None:
    out = clean_build.out
    before = {name: (out / name).stat().st_ino for name in (*ARTIFACT_NAMES, "manifest.json")}
    again = build(clean_build.options())
    assert again.cached
    assert again.manifest == clean_build.result.manifest
    assert {name: (out / name).stat().st_ino for name in before} == before, "published files were rewritten"
    assert _cache_listing(clean_build.cache) == [f"image-{again.manifest.cache_key}"]

    # A second output directory gets the same files without a rebuild.
    other = out.parent / "other-out"
    third = build(clean_build.options(out=other))
    assert third.cached
    Manifest.load(other).verify(other)


def _assert_untouched(clean_build: CleanBuild) -> None:
    key = clean_build.result.manifest.cache_key
    assert _cache_listing(clean_build.cache) == [f"image-{key}"], "a failed build left something in the cache"
    assert mounts_under(clean_build.cache) == []
    published = Manifest.load(clean_build.out)
    assert published.cache_key == key
    published.verify(clean_build.out)


def test_changed_input_rebuilds_and_a_failing_step_leaves_nothing(clean_build: CleanBuild) -> None:
    options = clean_build.options(modules=[*clean_build.result.manifest.initramfs_modules, "no_such_module"])
    with pytest.raises(GuestImageError) as info:
        build(options)
    # Reaching module resolution proves the changed key was not served from the cache.
    assert info.value.step == "kernel-modules"
    assert "'no_such_module'" in str(info.value)
    _assert_untouched(clean_build)


def test_mmdebstrap_failure_names_the_step_and_leaves_nothing(
    clean_build: CleanBuild, tmp_path: Path
) -> None:
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    # A closed port on loopback: apt inside mmdebstrap fails fast, nothing leaves the machine.
    (sources / "dead.sources").write_text(
        "Types: deb\nURIs: http://127.0.0.1:9/debian\nSuites: bookworm\nComponents: main\n"
    )
    options = clean_build.options(sources_dir=sources, step_timeout=240)
    with pytest.raises(GuestImageError) as info:
        build(options)
    # mmdebstrap normally exits at once here; it has been seen to hang instead, which the step
    # timeout turns into the same named failure.
    assert re.match(
        r"step 'mmdebstrap' failed: mmdebstrap (exited with status|did not finish)", str(info.value)
    )
    _assert_untouched(clean_build)
    assert not processes_mentioning(str(clean_build.cache)), "mmdebstrap left processes behind"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _cli(clean_build: CleanBuild, *args: str) -> subprocess.CompletedProcess[str]:
    common = ["--out", str(clean_build.out), "--cache", str(clean_build.cache)]
    common += ["--package-root", str(clean_build.package_root)]
    return subprocess.run(
        [sys.executable, "-m", "vmsandbox.guest.image.cli", "build", *common, *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )


def test_cli_reports_cached_builds_verifies_and_names_failed_steps(clean_build: CleanBuild) -> None:
    key = clean_build.result.manifest.cache_key
    done = _cli(clean_build)
    assert done.returncode == 0, done.stderr
    assert f"cached {key}" in done.stdout
    assert "rootfs.img" in done.stdout

    verify = [sys.executable, "-m", "vmsandbox.guest.image.cli", "verify", str(clean_build.out)]
    assert subprocess.run(verify, capture_output=True, env=_env(), check=False).returncode == 0

    failed = _cli(clean_build, "--module", "nope_x")
    assert failed.returncode == 1
    assert "vmsandbox-guest-image: step 'kernel-modules' failed:" in failed.stderr
    assert "Traceback" not in failed.stderr
    _assert_untouched(clean_build)
