"""Shared fixtures: the local Kubernetes control plane (``kube``, ``kube_namespace``), and
``subreaper`` for tests that reap relays as a runc-style caller does."""

import ctypes

import pytest

from vmsandbox.devcluster.pytest_plugin import kube, kube_namespace, pytest_collection_finish

__all__ = ["kube", "kube_namespace", "pytest_collection_finish", "subreaper"]

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(scope="session")
def subreaper() -> None:
    """Adopt orphaned descendants, as containerd's shim does: relays and VMMs are started as no
    child of their creator, and a runc-style caller reaps the relay to learn the exit status."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
