"""The image, checked without a Docker engine: its stages, pins, user and the checksum gate.

The checksum gate is exercised for real: the cloud-hypervisor stage's own RUN lines run under
/bin/sh (Docker's default shell) with the build args as environment, as Docker runs them.
Only the download is emulated: ``curl`` on PATH is a stand-in that checks the URL and writes
known bytes, and the output path ``/cloud-hypervisor`` is redirected into a temporary directory.
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


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse()


def test_stages_and_slim_python_base(dockerfile: Dockerfile) -> None:
    assert [s.name for s in dockerfile.stages] == ["wheel", "guest", "cloud-hypervisor", "runtime"]
    python = dockerfile.global_args["PYTHON_IMAGE"]
    assert python is not None and re.fullmatch(r"python:3\.11-slim(-bookworm)?", python)
    for name in ("wheel", "guest", "runtime"):
        assert dockerfile.stage(name).base == "${PYTHON_IMAGE}"


def test_cloud_hypervisor_is_pinned_by_version_and_checksum(dockerfile: Dockerfile) -> None:
    version = dockerfile.global_args["CLOUD_HYPERVISOR_VERSION"]
    assert version is not None and re.fullmatch(r"v\d+\.\d+", version)
    # No default checksum: the build must be told which one to trust.
    assert "CLOUD_HYPERVISOR_SHA256" in dockerfile.global_args
    assert dockerfile.global_args["CLOUD_HYPERVISOR_SHA256"] is None
    stage = dockerfile.stage("cloud-hypervisor")
    assert stage.args() == {"CLOUD_HYPERVISOR_VERSION": None, "CLOUD_HYPERVISOR_SHA256": None}
    script = "\n".join(stage.runs())
    assert CH_RELEASES + "${CLOUD_HYPERVISOR_VERSION}/cloud-hypervisor-static" in script
    assert "sha256sum -c" in script


def test_package_is_installed_as_a_wheel(dockerfile: Dockerfile) -> None:
    assert any(
        "pip wheel" in run and "--wheel-dir /wheels" in run for run in dockerfile.stage("wheel").runs()
    )
    runtime = dockerfile.stage("runtime")
    installs = [i for i in runtime.all("RUN") if "pip install" in i.value]
    assert len(installs) == 1
    flags, body = installs[0].flags_and_body
    assert "--mount=type=bind,from=wheel,source=/wheels,target=/wheels" in flags
    assert "/wheels/*.whl" in body


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
    assert {"crun", "runc", "skopeo", "umoci", "e2fsprogs"} <= runtime
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
    wheel = parse().stage("wheel")
    copied = {src for c in wheel.all("COPY") for src in c.value.split()[:-1]}
    assert copied <= allowed, f"COPY of {copied - allowed} would find nothing in the build context"
    assert {".git", "tests", "charts"}.isdisjoint(allowed)


# ---- the checksum gate, run for real ---------------------------------------------------------

PAYLOAD = b"\x7fELF stand-in for cloud-hypervisor-static\n"


def _run_ch_stage(
    dockerfile: Dockerfile, tmp_path: Path, sha256: str | None
) -> subprocess.CompletedProcess[str]:
    version = dockerfile.global_args["CLOUD_HYPERVISOR_VERSION"]
    assert version is not None
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    curl = bindir / "curl"
    curl.write_text(
        "#!/bin/sh\n"
        'out=""; url=""\n'
        "while [ $# -gt 0 ]; do\n"
        '  case "$1" in -o) out="$2"; shift 2;; --retry) shift 2;; -*) shift;; *) url="$1"; shift;; esac\n'
        "done\n"
        f'[ "$url" = "{CH_RELEASES}{version}/cloud-hypervisor-static" ] || {{\n'
        '  echo "unexpected URL $url" >&2; exit 22; }\n'
        f'cp {tmp_path / "payload"} "$out"\n'
    )
    curl.chmod(0o755)
    (tmp_path / "payload").write_bytes(PAYLOAD)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "CLOUD_HYPERVISOR_VERSION": version}
    if sha256 is not None:
        env["CLOUD_HYPERVISOR_SHA256"] = sha256
    target = tmp_path / "cloud-hypervisor"
    for run in dockerfile.stage("cloud-hypervisor").runs():
        if "apt-get" in run:
            continue  # curl comes from the stand-in
        # The output path only, not the URL's .../cloud-hypervisor/cloud-hypervisor/...
        script = re.sub(r"(?<![\w/.-])/cloud-hypervisor(?![\w/-])", str(target), run)
        proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return proc
    return subprocess.CompletedProcess([], 0, "", "")


def test_build_refuses_without_a_checksum(dockerfile: Dockerfile, tmp_path: Path) -> None:
    for value in (None, "", "abc123", "Z" * 64):
        proc = _run_ch_stage(dockerfile, tmp_path, value)
        assert proc.returncode != 0, value
        assert "CLOUD_HYPERVISOR_SHA256 must be set" in proc.stderr
        assert not (tmp_path / "cloud-hypervisor").exists(), "nothing may be downloaded without a checksum"


def test_build_fails_on_a_checksum_mismatch(dockerfile: Dockerfile, tmp_path: Path) -> None:
    wrong = hashlib.sha256(PAYLOAD + b"tampered").hexdigest()
    proc = _run_ch_stage(dockerfile, tmp_path, wrong)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def test_build_installs_the_binary_when_the_checksum_matches(dockerfile: Dockerfile, tmp_path: Path) -> None:
    proc = _run_ch_stage(dockerfile, tmp_path, hashlib.sha256(PAYLOAD).hexdigest())
    assert proc.returncode == 0, proc.stderr
    binary = tmp_path / "cloud-hypervisor"
    assert binary.read_bytes() == PAYLOAD
    assert os.access(binary, os.X_OK)


def test_chart_and_image_agree_on_the_default_command() -> None:
    """The chart's operator container runs the image's default command."""
    deployment = one(get_helm().render(), "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    cmd = parse().stage("runtime").instructions[-1].value
    assert yaml.safe_load(cmd) == command
