"""podman as the tests drive it: the image built by ``hack/build-image.sh`` and containers run from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-image.sh"
IMAGE = "localhost/vmsandbox:dev"
REQUIRE_ENV = "VMSANDBOX_REQUIRE_IMAGE"
#: What hack/build-image.sh writes: runc, and the limits root may set on this host.
CONTAINERS_CONF = Path(os.environ.get("VMSANDBOX_CACHE_DIR") or Path.home() / ".cache" / "vmsandbox") / (
    "image/containers.conf"
)


def image_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """Skip, or fail where the image is promised (CI sets VMSANDBOX_REQUIRE_IMAGE=1)."""
    if image_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
    pytest.skip(f"{reason} (set {REQUIRE_ENV}=1 to fail instead)")


def env() -> dict[str, str]:
    out = dict(os.environ)
    if CONTAINERS_CONF.is_file():
        out.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return out


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=env(), check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def build_image(*args: str, timeout: float = 7200) -> subprocess.CompletedProcess[str]:
    """``hack/build-image.sh ARGS``: output and status, never raising (tests assert on both)."""
    return subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        check=False,
    )


def inspect(ref: str) -> dict[str, Any]:
    data = json.loads(podman("image", "inspect", ref).stdout)
    assert len(data) == 1
    return dict(data[0])


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    id: str
    report: str

    @property
    def info(self) -> dict[str, Any]:
        return inspect(self.ref)

    def run(
        self, *argv: str, user: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """A throw-away container of the image, no network, running ``argv``."""
        flags = ["--rm", "--network", "none", "--pull", "never", "--entrypoint", argv[0]]
        if user is not None:
            flags += ["--user", user]
        return podman("run", *flags, self.ref, *argv[1:], check=False, timeout=timeout)

    def run_checked(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """:meth:`run`, failing the test (with the command's stderr) unless ``argv`` succeeds."""
        proc = self.run(*argv)
        assert proc.returncode == 0, proc.stderr
        return proc


class Outcome:
    """The image build, attempted once per session (before the first test, outside its timeout)."""

    #: The image, the reason it cannot be built here (a skip), or the build's failure (never a skip).
    value: BuiltImage | str | AssertionError | None = None

    @classmethod
    def get(cls) -> BuiltImage:
        if cls.value is None:
            try:
                cls.value = _build()
            except AssertionError as exc:
                cls.value = exc
        if isinstance(cls.value, AssertionError):
            pytest.fail(str(cls.value))
        if isinstance(cls.value, str):
            unavailable(cls.value)
        assert isinstance(cls.value, BuiltImage)
        return cls.value


def _build() -> BuiltImage | str:
    if shutil.which("podman") is None:
        return "podman is not installed (bash hack/setup.sh installs it)"
    if os.geteuid() != 0:
        return "the image tests build and run containers as root"
    proc = build_image()
    if proc.returncode != 0:
        # A broken build is never a skip.
        raise AssertionError(f"hack/build-image.sh failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    ident = inspect(IMAGE)["Id"]
    return BuiltImage(ref=IMAGE, id=ident, report=proc.stdout + proc.stderr)
