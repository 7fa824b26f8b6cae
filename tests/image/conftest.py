"""Fixtures of the image tests: the image (built once, before the first test), a loopback registry
holding it and a busybox image for sandboxes, and a helm renderer.

The build happens in ``pytest_collection_finish`` when any selected test is marked ``image``, so
a cold build (many minutes) is not charged to one test's timeout; warm, it is a cache hit.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.podman import BuiltImage, Outcome, podman
from tests.node_agent.support import Registry, build_busybox_layout, free_port, scratch_dir


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(item.get_closest_marker("image") for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("tests/image: hack/build-image.sh (cached by its inputs; cold: many minutes)")
    # The outcome (image, reason to skip, or failure) is kept for the tests to report.
    with contextlib.suppress(pytest.skip.Exception, pytest.fail.Exception):
        Outcome.get()


@pytest.fixture(scope="session")
def image() -> BuiltImage:
    return Outcome.get()


@pytest.fixture(scope="session")
def image_session_dir() -> Iterator[Path]:
    with scratch_dir("img") as path:
        yield path


@pytest.fixture(scope="session")
def image_registry(image: BuiltImage, image_session_dir: Path) -> Iterator[Registry]:
    """Debian's docker-registry on loopback, with test/busybox:latest for sandboxes."""
    if not Path("/usr/bin/docker-registry").exists() or shutil.which("umoci") is None:
        pytest.fail("the image tests need docker-registry and umoci (bash hack/setup.sh installs them)")
    root = image_session_dir / "registry"
    root.mkdir()
    reg = Registry(root=root, port=free_port())
    reg.start()
    try:
        reg.push(build_busybox_layout(image_session_dir / "busybox"), "latest", "test/busybox:latest")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def pushed_image(image: BuiltImage, image_registry: Registry) -> Iterator[str]:
    """The image pushed to the loopback registry and pulled back by digest: ``host/vmsandbox@sha256:...``."""
    repo = f"{image_registry.host}/vmsandbox"
    digest_file = image_registry.root / "pushed.digest"
    podman(
        "push", "--tls-verify=false", "--digestfile", str(digest_file), image.ref, f"{repo}:dev", timeout=900
    )
    digest = digest_file.read_text().strip()
    assert digest.startswith("sha256:") and len(digest) == 71, digest
    ref = f"{repo}@{digest}"
    podman("pull", "--tls-verify=false", ref, timeout=900)
    yield ref
    podman("rmi", "--ignore", f"{repo}:dev", check=False)
    podman("rmi", "--ignore", ref, check=False)
