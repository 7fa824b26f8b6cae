"""RBAC in the local control plane's front: rule matching, request attributes, and the live front.

The live tests run against the real API server behind the front: a user with no binding is
refused with kube-apiserver's 403 Status, a tenant gets exactly what its Role grants, and
SubjectAccessReviews (the server's delegated ones and clients') are answered by the same rules.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.security.tenant import (
    POOL_SCALER_RULES,
    POOLS,
    RBAC,
    SANDBOXES,
    bind,
    create,
    grant_tenant,
    sandbox,
)
from vmsandbox.devcluster.apipath import parse_api_path
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.rbac import (
    Attributes,
    Policy,
    UserInfo,
    bootstrap_objects,
    forbidden_message,
    request_attributes,
    user_from_token,
)

ALICE = UserInfo("alice", ("system:authenticated",))


def _attrs(verb: str, resource: str, **kw: Any) -> Attributes:
    return Attributes(user=kw.pop("user", ALICE), verb=verb, resource=resource, **kw)


def _role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str = "") -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"kind": kind, "metadata": meta, "rules": rules}


def _binding(
    kind: str, role_kind: str, role: str, subjects: list[dict[str, str]], namespace: str = ""
) -> dict[str, Any]:
    meta = {"name": f"b-{role}", **({"namespace": namespace} if namespace else {})}
    return {
        "kind": kind,
        "metadata": meta,
        "roleRef": {"kind": role_kind, "name": role},
        "subjects": subjects,
    }


# -- identities and attributes ------------------------------------------------------------------


def test_service_account_tokens_get_kubernetes_groups() -> None:
    user = user_from_token("system:serviceaccount:team-a:builder")
    assert user.name == "system:serviceaccount:team-a:builder"
    assert user.groups == ("system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated")
    assert user_from_token("alice").groups == ("system:authenticated",)
    assert user_from_token("").name == "system:anonymous"
    assert "system:masters" not in user_from_token("admin").groups
    assert "system:masters" not in user_from_token("system:serviceaccount:a:b").groups


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes", {}, ("list", "", "ns", "")),
        ("GET", "/apis/vmsandbox.io/v1alpha1/vmsandboxes", {"watch": "true"}, ("watch", "", "", "")),
        ("GET", "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes/a", {}, ("get", "", "ns", "a")),
        (
            "GET",
            "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes",
            {"fieldSelector": "metadata.name=a"},
            ("list", "", "ns", "a"),
        ),
        ("POST", "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes", {}, ("create", "", "ns", "")),
        (
            "PUT",
            "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes/a/status",
            {},
            ("update", "status", "ns", "a"),
        ),
        ("PATCH", "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes/a", {}, ("patch", "", "ns", "a")),
        ("DELETE", "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes/a", {}, ("delete", "", "ns", "a")),
        (
            "DELETE",
            "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes",
            {},
            ("deletecollection", "", "ns", ""),
        ),
        ("GET", "/api/v1/namespaces/ns", {}, ("get", "", "ns", "ns")),
    ],
)
def test_request_attributes_as_kube_apiserver_derives_them(
    method: str, path: str, query: dict[str, str], expected: tuple[str, str, str, str]
) -> None:
    attrs = request_attributes(ALICE, method, path, query, parse_api_path(path))
    assert (attrs.verb, attrs.subresource, attrs.namespace, attrs.name) == expected
    assert attrs.resource_request


def test_non_resource_paths() -> None:
    attrs = request_attributes(ALICE, "GET", "/version", {}, parse_api_path("/version"))
    assert not attrs.resource_request and attrs.verb == "get" and attrs.path == "/version"
    policy = Policy.from_objects(bootstrap_objects())
    assert policy.allows(attrs)
    assert not policy.allows(request_attributes(ALICE, "GET", "/metrics", {}, None))
    anonymous = user_from_token("")
    assert policy.allows(request_attributes(anonymous, "GET", "/livez", {}, None))
    assert not policy.allows(request_attributes(anonymous, "GET", "/apis", {}, parse_api_path("/apis")))


# -- rule matching ------------------------------------------------------------------------------


def test_rules_match_groups_resources_subresources_verbs_and_names() -> None:
    policy = Policy.from_objects(
        [
            _role(
                "ClusterRole",
                "r",
                [
                    {"apiGroups": ["vmsandbox.io"], "resources": ["vmsandboxes"], "verbs": ["get", "list"]},
                    {"apiGroups": ["vmsandbox.io"], "resources": ["vmsandboxes/status"], "verbs": ["update"]},
                    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"], "resourceNames": ["n1"]},
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["*/status"], "verbs": ["*"]},
                ],
            ),
            _binding("ClusterRoleBinding", "ClusterRole", "r", [{"kind": "User", "name": "alice"}]),
        ]
    )
    g = "vmsandbox.io"
    assert policy.allows(_attrs("get", "vmsandboxes", group=g, namespace="x", name="a"))
    assert policy.allows(_attrs("list", "vmsandboxes", group=g))
    assert not policy.allows(_attrs("create", "vmsandboxes", group=g, namespace="x"))
    assert not policy.allows(_attrs("get", "vmsandboxes", group="other.io", namespace="x"))
    # A subresource needs its own rule, and the resource's rule does not cover it.
    assert policy.allows(
        _attrs("update", "vmsandboxes", group=g, subresource="status", namespace="x", name="a")
    )
    assert not policy.allows(
        _attrs("get", "vmsandboxes", group=g, subresource="status", namespace="x", name="a")
    )
    assert not policy.allows(_attrs("update", "vmsandboxes", group=g, namespace="x", name="a"))
    assert policy.allows(_attrs("patch", "nodes", name="n1"))
    assert not policy.allows(_attrs("patch", "nodes", name="n2"))
    assert not policy.allows(_attrs("patch", "nodes"))  # resourceNames never match a nameless request
    assert policy.allows(
        _attrs("delete", "leases", group="coordination.k8s.io", subresource="status", name="l")
    )
    assert not policy.allows(_attrs("delete", "leases", group="coordination.k8s.io", name="l"))
    assert not policy.allows(
        _attrs("get", "vmsandboxes", group=g, user=UserInfo("bob", ("system:authenticated",)))
    )


def test_role_bindings_grant_only_in_their_namespace() -> None:
    policy = Policy.from_objects(
        [
            _role(
                "Role", "edit", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], namespace="team-a"
            ),
            _role("ClusterRole", "view", [{"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}]),
            _binding("RoleBinding", "Role", "edit", [{"kind": "Group", "name": "devs"}], namespace="team-a"),
            _binding(
                "RoleBinding",
                "ClusterRole",
                "view",
                [{"kind": "ServiceAccount", "name": "ci", "namespace": "team-b"}],
                namespace="team-b",
            ),
            # A RoleBinding naming a Role of another namespace grants nothing.
            _binding("RoleBinding", "Role", "edit", [{"kind": "User", "name": "alice"}], namespace="team-c"),
        ]
    )
    dev = UserInfo("carol", ("devs", "system:authenticated"))
    assert policy.allows(_attrs("delete", "vmsandboxes", group="vmsandbox.io", namespace="team-a", user=dev))
    assert not policy.allows(
        _attrs("delete", "vmsandboxes", group="vmsandbox.io", namespace="team-b", user=dev)
    )
    assert not policy.allows(_attrs("list", "nodes", user=dev))  # cluster scope
    ci = user_from_token("system:serviceaccount:team-b:ci")
    assert policy.allows(_attrs("list", "events", namespace="team-b", user=ci))
    assert not policy.allows(_attrs("list", "events", namespace="team-a", user=ci))
    assert not policy.allows(_attrs("list", "events", user=ci))
    assert not policy.allows(_attrs("get", "vmsandboxes", group="vmsandbox.io", namespace="team-c"))


def test_forbidden_message_is_kube_apiservers() -> None:
    attrs = _attrs("create", "vmsandboxes", group="vmsandbox.io", namespace="ns", user=UserInfo("x"))
    assert forbidden_message(attrs) == (
        'vmsandboxes.vmsandbox.io is forbidden: User "x" cannot create resource "vmsandboxes" '
        'in API group "vmsandbox.io" in the namespace "ns"'
    )
    node = _attrs("patch", "nodes", subresource="status", name="n1", user=UserInfo("x"))
    assert forbidden_message(node) == (
        'nodes "n1" is forbidden: User "x" cannot patch resource "nodes/status" '
        'in API group "" at the cluster scope'
    )


# -- the live front -----------------------------------------------------------------------------


def _user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_request_without_binding_is_refused_naming_user_verb_and_resource(
    kube: LocalCluster, kube_namespace: str
) -> None:
    user = _user("nobody")
    url = SANDBOXES.format(ns=kube_namespace)
    resp = kube.http("POST", url, json=sandbox("s1"), headers={"Authorization": f"Bearer {user}"})
    assert resp.status_code == 403, resp.text
    body = resp.json()
    assert body["kind"] == "Status" and body["reason"] == "Forbidden" and body["code"] == 403
    assert body["message"] == (
        f'vmsandboxes.vmsandbox.io is forbidden: User "{user}" cannot create resource "vmsandboxes" '
        f'in API group "vmsandbox.io" in the namespace "{kube_namespace}"'
    )
    assert body["details"] == {"group": "vmsandbox.io", "kind": "vmsandboxes"}
    # Nothing was created, and the refusal is in the request log.
    assert kube.http("GET", f"{url}/s1").status_code == 404
    record = [r for r in kube.requests_made() if r.user == user][-1]
    assert (record.verb, record.resource, record.status) == ("create", "vmsandboxes", 403)
    # Emulated core kinds are authorized in their public coordinates too.
    nodes = kube.http("GET", "/api/v1/nodes", headers={"Authorization": f"Bearer {user}"})
    assert nodes.status_code == 403
    assert (
        f'User "{user}" cannot list resource "nodes" in API group "" at the cluster scope'
        in nodes.json()["message"]
    )


def test_tenant_gets_exactly_its_role(kube: LocalCluster, kube_namespace: str) -> None:
    tenant = _user("tenant")
    grant_tenant(kube, kube_namespace, tenant)
    auth = {"Authorization": f"Bearer {tenant}"}
    url = SANDBOXES.format(ns=kube_namespace)
    assert kube.http("POST", url, json=sandbox("mine"), headers=auth).status_code == 201
    assert kube.http("GET", f"{url}/mine", headers=auth).status_code == 200
    assert kube.http("GET", url, headers=auth).json()["items"][0]["metadata"]["name"] == "mine"
    refused = {
        "patch": kube.http(
            "PATCH",
            f"{url}/mine",
            json={"metadata": {"labels": {"vmsandbox.io/node": "n1"}}},
            headers={**auth, "Content-Type": "application/merge-patch+json"},
        ),
        "update status": kube.http(
            "PUT", f"{url}/mine/status", json=kube.http("GET", f"{url}/mine").json(), headers=auth
        ),
        "watch": kube.http("GET", url, params={"watch": "true", "timeoutSeconds": "1"}, headers=auth),
        "other namespace": kube.http("GET", SANDBOXES.format(ns="default"), headers=auth),
        "roles": kube.http(
            "POST",
            f"{RBAC}/namespaces/{kube_namespace}/rolebindings",
            json={
                "kind": "RoleBinding",
                "metadata": {"name": "x"},
                "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
            },
            headers=auth,
        ),
        "crds": kube.http("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", headers=auth),
    }
    for what, resp in refused.items():
        assert resp.status_code == 403, (what, resp.status_code, resp.text)
        assert f'User "{tenant}"' in resp.json()["message"], what
    assert "labels" not in kube.http("GET", f"{url}/mine").json()["metadata"]
    # Discovery works for every authenticated user, as on a real cluster.
    assert kube.http("GET", "/apis", headers=auth).status_code == 200
    assert kube.http("DELETE", f"{url}/mine", headers=auth).status_code == 200


def test_bindings_take_effect_at_once_and_revocation_too(kube: LocalCluster, kube_namespace: str) -> None:
    user = _user("late")
    auth = {"Authorization": f"Bearer {user}"}
    url = f"/api/v1/namespaces/{kube_namespace}/events"
    assert kube.http("GET", url, headers=auth).status_code == 403
    create(
        kube,
        f"{RBAC}/namespaces/{kube_namespace}/roles",
        _role("Role", "ev", [{"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}])
        | {"apiVersion": "rbac.authorization.k8s.io/v1"},
    )
    bind(kube, kube_namespace, "Role", "ev", [{"kind": "User", "name": user}], name="ev")
    assert kube.http("GET", url, headers=auth).status_code == 200
    assert kube.http("DELETE", f"{RBAC}/namespaces/{kube_namespace}/rolebindings/ev").status_code == 200
    assert kube.http("GET", url, headers=auth).status_code == 403


def test_service_account_groups_are_bound(kube: LocalCluster, kube_namespace: str) -> None:
    name = _user("sa-readers")
    create(
        kube,
        f"{RBAC}/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list"]}],
        },
    )
    try:
        bind(
            kube,
            kube_namespace,
            "ClusterRole",
            name,
            [{"kind": "Group", "name": f"system:serviceaccounts:{kube_namespace}"}],
        )
        inside = {"Authorization": f"Bearer system:serviceaccount:{kube_namespace}:any"}
        outside = {"Authorization": "Bearer system:serviceaccount:elsewhere:any"}
        url = f"/apis/coordination.k8s.io/v1/namespaces/{kube_namespace}/leases"
        assert kube.http("GET", url, headers=inside).status_code == 200
        assert kube.http("GET", url, headers=outside).status_code == 403
    finally:
        kube.http("DELETE", f"{RBAC}/clusterroles/{name}")


def test_access_reviews_follow_the_same_rules(kube: LocalCluster, kube_namespace: str) -> None:
    tenant = _user("reviewed")
    grant_tenant(kube, kube_namespace, tenant)

    def review(verb: str, namespace: str, subresource: str = "") -> bool:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": tenant,
                "groups": ["system:authenticated"],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": "vmsandbox.io",
                    "resource": "vmsandboxes",
                    "subresource": subresource,
                },
            },
        }
        resp = kube.http("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", json=body)
        assert resp.status_code == 201, resp.text
        return bool(resp.json()["status"]["allowed"])

    assert review("create", kube_namespace)
    assert not review("create", "default")
    assert not review("get", kube_namespace, "log")
    assert not review("update", kube_namespace, "status")
    # The tenant may not ask about others (no create on subjectaccessreviews), only about itself.
    auth = {"Authorization": f"Bearer {tenant}"}
    resp = kube.http("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", json={}, headers=auth)
    assert resp.status_code == 403
    own = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": kube_namespace,
                "verb": "delete",
                "group": "vmsandbox.io",
                "resource": "vmsandboxes",
            }
        },
    }
    resp = kube.http("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", json=own, headers=auth)
    assert resp.status_code == 201 and resp.json()["status"]["allowed"] is True
    # The token review gives the tenant its groups, never system:masters.
    token = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": tenant}}
    resp = kube.http("POST", "/apis/authentication.k8s.io/v1/tokenreviews", json=token)
    assert resp.json()["status"]["user"] == {"username": tenant, "groups": ["system:authenticated"]}


def test_a_pool_scaler_may_change_replicas_and_nothing_else(kube: LocalCluster, kube_namespace: str) -> None:
    """The README's pool-scaler role, enforced by the front on the scale subresource."""
    user = _user("scaler")
    auth = {"Authorization": f"Bearer {user}"}
    merge = {**auth, "Content-Type": "application/merge-patch+json"}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pool-scaler"}}
    create(kube, f"{RBAC}/namespaces/{kube_namespace}/roles", {**role, "rules": POOL_SCALER_RULES})
    bind(kube, kube_namespace, "Role", "pool-scaler", [{"kind": "User", "name": user}], name="scaler")
    url = POOLS.format(ns=kube_namespace)
    pool = {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandboxPool",
        "metadata": {"name": "p"},
        "spec": {},
    }
    assert kube.http("POST", url, json=pool, headers=auth).status_code == 403
    create(kube, url, pool)
    scaled = kube.http("PATCH", f"{url}/p/scale", json={"spec": {"replicas": 3}}, headers=merge)
    assert scaled.status_code == 200, scaled.text
    assert kube.http("GET", f"{url}/p").json()["spec"]["replicas"] == 3
    refused = {
        "spec": kube.http("PATCH", f"{url}/p", json={"spec": {"replicas": 5}}, headers=merge),
        "status": kube.http("PATCH", f"{url}/p/status", json={"status": {"readyReplicas": 9}}, headers=merge),
        "delete": kube.http("DELETE", f"{url}/p", headers=auth),
        "sandboxes": kube.http("GET", SANDBOXES.format(ns=kube_namespace), headers=auth),
    }
    for what, resp in refused.items():
        assert resp.status_code == 403, (what, resp.status_code, resp.text)
    assert kube.http("GET", f"{url}/p").json()["spec"]["replicas"] == 3
