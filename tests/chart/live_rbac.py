"""The chart's RBAC objects installed into the local control plane, whose front enforces them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.chart.helm import Helm
from vmsandbox.devcluster.cluster import LocalCluster

RBAC_API = "/apis/rbac.authorization.k8s.io/v1"
_PLURALS = {
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}


def _path(obj: dict[str, Any]) -> str:
    namespace = obj["metadata"].get("namespace")
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{RBAC_API}{where}/{_PLURALS[obj['kind']]}"


@contextmanager
def chart_rbac(
    kube: LocalCluster, helm: Helm, namespace: str, sets: tuple[str, ...] = ()
) -> Iterator[list[dict[str, Any]]]:
    """The rendered chart's Roles, ClusterRoles and bindings for a release in ``namespace``, removed after.

    Cluster-scoped objects keep their chart names, so one release is installed at a time;
    an object left by another test is replaced.
    """
    objects = [o for o in helm.render(namespace=namespace, sets=list(sets)) if o.get("kind") in _PLURALS]
    created: list[str] = []
    try:
        for obj in objects:
            path = _path(obj)
            name = obj["metadata"]["name"]
            resp = kube.http("POST", path, json=obj)
            if resp.status_code == 409:
                kube.http("DELETE", f"{path}/{name}")
                resp = kube.http("POST", path, json=obj)
            assert resp.status_code == 201, f"{obj['kind']} {name}: {resp.status_code} {resp.text}"
            created.append(f"{path}/{name}")
        yield objects
    finally:
        for url in reversed(created):
            kube.http("DELETE", url)
