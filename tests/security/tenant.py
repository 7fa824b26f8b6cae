"""A tenant as a cluster admin would set one up: create/get/list/delete vmsandboxes in one namespace."""

from __future__ import annotations

from typing import Any

from vmsandbox.devcluster.cluster import LocalCluster

RBAC = "/apis/rbac.authorization.k8s.io/v1"
SANDBOXES = "/apis/vmsandbox.io/v1alpha1/namespaces/{ns}/vmsandboxes"
TENANT_VERBS = ("create", "get", "list", "delete")


def create(kube: LocalCluster, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    resp = kube.http("POST", path, json=obj)
    assert resp.status_code == 201, f"POST {path}: {resp.status_code} {resp.text}"
    body: dict[str, Any] = resp.json()
    return body


def grant_tenant(kube: LocalCluster, namespace: str, user: str) -> None:
    """A Role with only the tenant's verbs on vmsandboxes, bound to ``user`` in ``namespace``."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "sandbox-tenant", "namespace": namespace},
        "rules": [{"apiGroups": ["vmsandbox.io"], "resources": ["vmsandboxes"], "verbs": list(TENANT_VERBS)}],
    }
    create(kube, f"{RBAC}/namespaces/{namespace}/roles", role)
    bind(kube, namespace, "Role", "sandbox-tenant", [{"kind": "User", "name": user}], name=f"tenant-{user}")


def bind(
    kube: LocalCluster,
    namespace: str,
    role_kind: str,
    role: str,
    subjects: list[dict[str, str]],
    name: str | None = None,
) -> None:
    """A RoleBinding (``namespace`` set) or ClusterRoleBinding (``namespace`` empty)."""
    binding: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding" if namespace else "ClusterRoleBinding",
        "metadata": {"name": name or f"{role}-binding"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", **s} for s in subjects],
    }
    if namespace:
        binding["metadata"]["namespace"] = namespace
        create(kube, f"{RBAC}/namespaces/{namespace}/rolebindings", binding)
    else:
        create(kube, f"{RBAC}/clusterrolebindings", binding)


def sandbox(
    name: str, image: str = "oci:/var/lib/vmsandbox-samples/busybox:latest", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandbox",
        "metadata": {"name": name},
        "spec": {"image": image, **spec},
    }


POOLS = "/apis/vmsandbox.io/v1alpha1/namespaces/{ns}/vmsandboxpools"
#: The README's example for whoever sizes pools (a person or an autoscaler): replicas, nothing else.
POOL_SCALER_RULES = [
    {"apiGroups": ["vmsandbox.io"], "resources": ["vmsandboxpools"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["vmsandbox.io"],
        "resources": ["vmsandboxpools/scale"],
        "verbs": ["get", "update", "patch"],
    },
]
