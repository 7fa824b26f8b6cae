"""The image, checked without a Docker engine: its stages, pins, user and the checksum gate.

The checksum gate is exercised for real: the cloud-hypervisor stage's own RUN line runs under
/bin/sh (Docker's default shell) with the build args as environment, as Docker runs it. Only
the download and the package install are emulated: ``curl`` on PATH is a stand-in that checks the
URL and writes known bytes, ``apt-get`` does nothing, and the stage's ``/out`` and ``/context``
are redirected into a temporary directory. tests/image builds the stage for real with podman.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.chart.dockerfile import Dockerfile, parse
from tests.chart.helm import REPO, get_helm, one

CH_RELEASES = "https://github.com/cloud-hypervisor/cloud-hypervisor/releases/download/"
CH_PIN = ("v53.0", "448af3d4e59b22c2987f7df94c213ad40fb53a10d437e42b5ee6c4fce7c29ecc")
VENV = "/opt/vmsandbox/venv"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse()


def test_stages_share_one_debian_base(dockerfile: Dockerfile) -> None:
    assert [s.name for s in dockerfile.stages] == ["build", "guest", "cloud-hypervisor", "runtime"]
    base = dockerfile.global_args["BASE_IMAGE"]
    assert base is not None and re.fullmatch(
        r"docker\.io/library/debian:bookworm-slim(@sha256:[0-9a-f]{64})?", base
    )
    for stage in dockerfile.stages:
        assert stage.base == "${BASE_IMAGE}", stage.name


def test_cloud_hypervisor_is_pinned_by_version_and_checksum(dockerfile: Dockerfile) -> None:
    assert (
        dockerfile.global_args["CLOUD_HYPERVISOR_VERSION"],
        dockerfile.global_args["CLOUD_HYPERVISOR_SHA256"],
    ) == CH_PIN
    assert dockerfile.global_args["CLOUD_HYPERVISOR_FILE"] == ""
    stage = dockerfile.stage("cloud-hypervisor")
    assert stage.args() == {
        "CLOUD_HYPERVISOR_VERSION": None,
        "CLOUD_HYPERVISOR_SHA256": None,
        "CLOUD_HYPERVISOR_FILE": None,
    }
    script = "\n".join(stage.runs())
    assert CH_RELEASES + "$version/cloud-hypervisor-static" in script
    assert "sha256sum -c" in script
    # The guard against a new version with the old checksum names the same pin as the defaults.
    assert f'[ "$version" != {CH_PIN[0]} ] && [ "$sha" = {CH_PIN[1]} ]' in script
    runtime = dockerfile.stage("runtime")
    assert any(c.value == "--from=cloud-hypervisor /out/ /usr/local/bin/" for c in runtime.all("COPY"))
    labels = " ".join(i.value for i in runtime.all("LABEL"))
    assert 'io.vmsandbox.cloud-hypervisor="${CLOUD_HYPERVISOR_VERSION}"' in labels


def test_package_is_installed_into_a_virtualenv_without_pip(dockerfile: Dockerfile) -> None:
    build = dockerfile.stage("build")
    assert any(f"python3 -m venv {VENV}" in run and f"{VENV}/bin/pip install" in run for run in build.runs())
    runtime = dockerfile.stage("runtime")
    copies = [i for i in runtime.all("RUN") if f"source={VENV}" in i.value]
    assert len(copies) == 1
    flags, body = copies[0].flags_and_body
    assert f"--mount=type=bind,from=build,source={VENV},target=/mnt/venv" in flags
    assert "site-packages/pip " in body and "site-packages/setuptools*" in body and "bin/pip*" in body
    env = " ".join(e.value for e in runtime.all("ENV"))
    assert f"PATH={VENV}/bin:" in env


def _apt_packages(runs: list[str]) -> set[str]:
    packages: set[str] = set()
    for run in runs:
        for command in run.split("&&"):
            if "apt-get install" in command:
                packages |= {
                    w
                    for w in command.split()[command.split().index("install") + 1 :]
                    if not w.startswith("-")
                }
    return packages


def test_debian_tools(dockerfile: Dockerfile) -> None:
    runtime = _apt_packages(dockerfile.stage("runtime").runs())
    assert {"python3", "crun", "runc", "skopeo", "umoci", "e2fsprogs", "qemu-system-x86"} <= runtime
    # No build tools in the image that runs: they stay in the build and guest stages.
    assert runtime.isdisjoint(
        {"python3-pip", "python3-venv", "mmdebstrap", "curl", "wget", "gcc", "build-essential"}
    )
    guest = _apt_packages(dockerfile.stage("guest").runs())
    assert {"mmdebstrap", "busybox-static", "cpio", "kmod"} <= guest
    # Every name is a real Debian package (this machine runs the same Debian release).
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *sorted(runtime | guest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_runs_as_non_root_by_default(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    users = runtime.all("USER")
    assert users and users[-1].value.split(":")[0] == "65532"
    assert any("useradd" in run and "--uid 65532" in run for run in runtime.runs())
    assert runtime.instructions[-1].name == "CMD"
    assert runtime.instructions[-1].value == '["vmsandbox-operator"]'


def test_guest_image_location_agrees_with_the_chart(dockerfile: Dockerfile) -> None:
    guest_runs = dockerfile.stage("guest").runs()
    out = next(
        re.search(r"vmsandbox-guest-image build --out (\S+)", r) for r in guest_runs if "build --out" in r
    )
    assert out is not None
    guest_dir = out.group(1)
    runtime = dockerfile.stage("runtime")
    assert any(c.value == f"--from=guest {guest_dir} {guest_dir}" for c in runtime.all("COPY"))
    env = " ".join(e.value for e in runtime.all("ENV"))
    assert f"VMSANDBOX_GUEST_IMAGE_DIR={guest_dir}" in env
    daemonset = one(get_helm().render(), "DaemonSet")
    container_env = {
        e["name"]: e.get("value") for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert container_env["VMSANDBOX_GUEST_IMAGE_DIR"] == guest_dir
    assert container_env["VMSANDBOX_AGENT_GUEST_IMAGE_DIR"] == guest_dir


def test_image_has_the_commands_the_chart_runs() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    objects = get_helm().render()
    for kind in ("Deployment", "DaemonSet"):
        command = one(objects, kind)["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[0] in scripts, f"{kind} runs {command[0]}, which the wheel does not install"


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    build = parse().stage("build")
    copied = {src for c in build.all("COPY") for src in c.value.split()[:-1]}
    assert copied <= allowed, f"COPY of {copied - allowed} would find nothing in the build context"
    assert "vendor" in allowed  # where CLOUD_HYPERVISOR_FILE points for offline builds
    assert {".git", "tests", "charts", "hack"}.isdisjoint(allowed)


# ---- the checksum gate, run for real ---------------------------------------------------------

PAYLOAD = b"\x7fELF stand-in for cloud-hypervisor-static\n"


def _run_ch_stage(dockerfile: Dockerfile, tmp_path: Path, **args: str) -> subprocess.CompletedProcess[str]:
    """The stage's RUN under /bin/sh with ``args`` as build args (defaults as the Dockerfile's)."""
    env_args = {
        k: v for k, v in dockerfile.global_args.items() if k.startswith("CLOUD_HYPERVISOR_") and v is not None
    }
    env_args.update(args)
    version = env_args.get("CLOUD_HYPERVISOR_VERSION", "")
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "curl").write_text(
        "#!/bin/sh\n"
        'out=""; url=""\n'
        "while [ $# -gt 0 ]; do\n"
        '  case "$1" in -o) out="$2"; shift 2;; --retry) shift 2;; -*) shift;; *) url="$1"; shift;; esac\n'
        "done\n"
        f'[ "$url" = "{CH_RELEASES}{version}/cloud-hypervisor-static" ] || {{\n'
        '  echo "unexpected URL $url" >&2; exit 22; }\n'
        f'cp {tmp_path / "payload"} "$out"\n'
    )
    (bindir / "apt-get").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("curl", "apt-get"):
        (bindir / tool).chmod(0o755)
    (tmp_path / "payload").write_bytes(PAYLOAD)
    (tmp_path / "context").mkdir(exist_ok=True)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", **env_args}
    (run,) = dockerfile.stage("cloud-hypervisor").runs()
    pattern = r"(?<![\w/.-])/(out|context)(?![\w.-])"
    script = re.sub(pattern, lambda m: str(tmp_path / m.group(1)), run)
    assert not re.search(pattern, script), "the stage would write outside the test's directory"
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False)


def _run_matching(dockerfile: Dockerfile, tmp_path: Path, version: str) -> subprocess.CompletedProcess[str]:
    """The stage for ``version`` pinned to the stand-in payload's own checksum: a build that passes."""
    checksum = hashlib.sha256(PAYLOAD).hexdigest()
    return _run_ch_stage(
        dockerfile, tmp_path, CLOUD_HYPERVISOR_VERSION=version, CLOUD_HYPERVISOR_SHA256=checksum
    )


def test_build_refuses_a_malformed_checksum(dockerfile: Dockerfile, tmp_path: Path) -> None:
    for value in ("", "abc123", "Z" * 64):
        proc = _run_ch_stage(dockerfile, tmp_path, CLOUD_HYPERVISOR_SHA256=value)
        assert proc.returncode != 0, value
        assert "CLOUD_HYPERVISOR_SHA256 must be the 64-hex sha256" in proc.stderr
        assert not (tmp_path / "out" / "cloud-hypervisor").exists(), (
            "nothing may be fetched without a checksum"
        )


def test_another_version_needs_its_own_checksum(dockerfile: Dockerfile, tmp_path: Path) -> None:
    proc = _run_ch_stage(dockerfile, tmp_path, CLOUD_HYPERVISOR_VERSION="v51.1")
    assert proc.returncode != 0
    assert "CLOUD_HYPERVISOR_VERSION=v51.1 needs its own CLOUD_HYPERVISOR_SHA256" in proc.stderr
    ok = _run_matching(dockerfile, tmp_path, "v51.1")
    assert ok.returncode == 0, ok.stderr


def test_build_fails_on_a_checksum_mismatch_naming_both(dockerfile: Dockerfile, tmp_path: Path) -> None:
    proc = _run_ch_stage(dockerfile, tmp_path)  # the real v53.0 pin against stand-in bytes
    assert proc.returncode != 0
    assert "CLOUD_HYPERVISOR_SHA256 mismatch" in proc.stderr
    assert CH_PIN[1] in proc.stderr and hashlib.sha256(PAYLOAD).hexdigest() in proc.stderr
    assert not (tmp_path / "out" / "cloud-hypervisor").exists()


def test_build_installs_the_binary_when_the_checksum_matches(dockerfile: Dockerfile, tmp_path: Path) -> None:
    proc = _run_matching(dockerfile, tmp_path, "v53.0")
    assert proc.returncode == 0, proc.stderr
    binary = tmp_path / "out" / "cloud-hypervisor"
    assert binary.read_bytes() == PAYLOAD
    assert os.access(binary, os.X_OK)


def test_offline_file_is_checked_like_a_download(dockerfile: Dockerfile, tmp_path: Path) -> None:
    (tmp_path / "context" / "vendor").mkdir(parents=True)
    (tmp_path / "context" / "vendor" / "ch").write_bytes(PAYLOAD + b"local")
    args = {"CLOUD_HYPERVISOR_FILE": "vendor/ch"}
    wrong = _run_ch_stage(dockerfile, tmp_path, **args)
    assert wrong.returncode != 0 and "CLOUD_HYPERVISOR_SHA256 mismatch" in wrong.stderr
    right = _run_ch_stage(
        dockerfile, tmp_path, **args, CLOUD_HYPERVISOR_SHA256=hashlib.sha256(PAYLOAD + b"local").hexdigest()
    )
    assert right.returncode == 0, right.stderr
    assert (tmp_path / "out" / "cloud-hypervisor").read_bytes() == PAYLOAD + b"local"
    gone = _run_ch_stage(dockerfile, tmp_path, CLOUD_HYPERVISOR_FILE="vendor/missing")
    assert (
        gone.returncode != 0
        and "CLOUD_HYPERVISOR_FILE=vendor/missing is not in the build context" in gone.stderr
    )


def test_absent_builds_without_a_binary(dockerfile: Dockerfile, tmp_path: Path) -> None:
    proc = _run_ch_stage(dockerfile, tmp_path, CLOUD_HYPERVISOR_VERSION="absent")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").iterdir()) == []


def test_chart_and_image_agree_on_the_default_command() -> None:
    """The chart's operator container runs the image's default command."""
    deployment = one(get_helm().render(), "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    cmd = parse().stage("runtime").instructions[-1].value
    assert yaml.safe_load(cmd) == command
