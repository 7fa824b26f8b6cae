"""A local control plane: the real Kubernetes CRD API server (apiextensions-apiserver + etcd)
behind a small front server that adds discovery, delegated auth and a few core kinds.

See README.md beside this file for which semantics are real and which are emulated.
"""

from vmsandbox.devcluster.cluster import LocalCluster, default_crd_dir, load_crds
from vmsandbox.devcluster.errors import DevClusterError, KubeBinariesUnavailable
from vmsandbox.devcluster.requestlog import RequestRecord, read_request_log

__all__ = [
    "DevClusterError",
    "KubeBinariesUnavailable",
    "LocalCluster",
    "RequestRecord",
    "default_crd_dir",
    "load_crds",
    "read_request_log",
]
