"""pytest fixtures: ``kube`` (one LocalCluster per session) and ``kube_namespace`` (a fresh namespace).

``kube`` skips its tests only when the binaries cannot be built and ``VMSANDBOX_REQUIRE_KUBE``
is unset; with it set (as CI sets it) the same situation is an error.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

from vmsandbox.devcluster.binaries import find_binaries
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.errors import KubeBinariesUnavailable

REQUIRE_ENV = "VMSANDBOX_REQUIRE_KUBE"


def kube_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def kube() -> Iterator[LocalCluster]:
    """The session's local control plane, with the repository's CRDs installed."""
    try:
        bin_dir = find_binaries(build=True)
    except KubeBinariesUnavailable as exc:
        if kube_required():
            pytest.fail(f"{REQUIRE_ENV} is set but the Kubernetes API server is unavailable: {exc}")
        pytest.skip(f"real Kubernetes API server unavailable (set {REQUIRE_ENV}=1 to fail instead): {exc}")
    with LocalCluster(bin_dir=bin_dir) as cluster:
        yield cluster


@pytest.fixture
def kube_namespace(kube: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace made for this test (deleted afterwards; its objects stay, as there is no GC)."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "test"
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    resp = kube.http("POST", "/api/v1/namespaces", json=body)
    assert resp.status_code == 201, f"creating namespace {name}: {resp.status_code} {resp.text}"
    yield name
    kube.http("DELETE", f"/api/v1/namespaces/{name}")
