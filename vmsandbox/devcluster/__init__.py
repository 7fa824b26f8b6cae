"""A local control plane: the real Kubernetes CRD API server (apiextensions-apiserver + etcd)
behind a small front server that adds discovery, delegated auth and a few core kinds.

See README.md beside this file for which semantics are real and which are emulated. Exports
are imported on first use, so that the front's own process starts without the client side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmsandbox.devcluster.cluster import LocalCluster, default_crd_dir, load_crds
    from vmsandbox.devcluster.errors import DevClusterError, KubeBinariesUnavailable
    from vmsandbox.devcluster.requestlog import RequestRecord, read_request_log

_EXPORTS = {
    "LocalCluster": "cluster",
    "default_crd_dir": "cluster",
    "load_crds": "cluster",
    "DevClusterError": "errors",
    "KubeBinariesUnavailable": "errors",
    "RequestRecord": "requestlog",
    "read_request_log": "requestlog",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "DevClusterError",
    "KubeBinariesUnavailable",
    "LocalCluster",
    "RequestRecord",
    "default_crd_dir",
    "load_crds",
    "read_request_log",
]
