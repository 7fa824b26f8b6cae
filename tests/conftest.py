"""Shared fixtures: the local Kubernetes control plane (``kube``, ``kube_namespace``)."""

from vmsandbox.devcluster.pytest_plugin import kube, kube_namespace, pytest_collection_finish

__all__ = ["kube", "kube_namespace", "pytest_collection_finish"]
