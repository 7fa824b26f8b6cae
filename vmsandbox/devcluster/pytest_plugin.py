"""pytest fixtures ``kube`` (one LocalCluster per session) and ``kube_namespace`` (a fresh namespace),
and a hook that builds missing binaries after collection, before the first test.

``kube`` skips its tests only when the binaries cannot be built and ``VMSANDBOX_REQUIRE_KUBE``
is unset; with it set (as CI sets it) the same situation is an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsandbox.devcluster.binaries import find_binaries
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.errors import KubeBinariesUnavailable

REQUIRE_ENV = "VMSANDBOX_REQUIRE_KUBE"


def kube_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").lower() not in ("", "0", "false", "no")


class _Binaries:
    """The outcome of finding (or building) the binaries, decided once per session."""

    outcome: Path | KubeBinariesUnavailable | None = None

    @classmethod
    def get(cls) -> Path:
        if cls.outcome is None:
            try:
                cls.outcome = find_binaries(build=True)
            except KubeBinariesUnavailable as exc:
                cls.outcome = exc
        if isinstance(cls.outcome, KubeBinariesUnavailable):
            raise cls.outcome
        return cls.outcome


def pytest_collection_finish(session: pytest.Session) -> None:
    """Builds missing binaries before the first test, so the build is not charged to a test's timeout."""
    if not any("kube" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    if not _binaries_cached():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("vmsandbox.devcluster: building the Kubernetes API server (once, ~6 minutes)")
    with contextlib.suppress(KubeBinariesUnavailable):
        _Binaries.get()


def _binaries_cached() -> bool:
    try:
        find_binaries(build=False)
    except KubeBinariesUnavailable:
        return False
    return True


@pytest.fixture(scope="session")
def kube() -> Iterator[LocalCluster]:
    """The session's local control plane, with the repository's CRDs installed."""
    try:
        bin_dir = _Binaries.get()
    except KubeBinariesUnavailable as exc:
        if kube_required():
            pytest.fail(f"{REQUIRE_ENV} is set but the Kubernetes API server is unavailable: {exc}")
        pytest.skip(f"real Kubernetes API server unavailable (set {REQUIRE_ENV}=1 to fail instead): {exc}")
    with LocalCluster(bin_dir=bin_dir, fault_injection=True) as cluster:
        yield cluster


@pytest.fixture
def kube_namespace(kube: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace made for this test, deleted afterwards with the objects in it."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "test"
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    resp = kube.http("POST", "/api/v1/namespaces", json=body)
    assert resp.status_code == 201, f"creating namespace {name}: {resp.status_code} {resp.text}"
    yield name
    kube.http("DELETE", f"/api/v1/namespaces/{name}")
