"""Kubernetes RBAC, as the front enforces it: identities from tokens, request attributes, rule matching.

The rules are ``rbac.authorization.k8s.io/v1`` objects stored like the other emulated kinds;
:class:`Authorizer` evaluates them the way kube-apiserver's RBAC authorizer does (no
aggregation, no escalation checks on writes to RBAC objects). Identities come from the
bearer token, which *is* the user name: a ``system:serviceaccount:<ns>:<name>`` token gets
the groups Kubernetes gives service accounts, the cluster's own components
(``system:devcluster:*``) are in ``system:masters``, which RBAC never restricts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmsandbox.devcluster.apipath import ApiPath
from vmsandbox.devcluster.corekinds import RBAC_GROUP

MASTERS_GROUP = "system:masters"
AUTHENTICATED_GROUP = "system:authenticated"
UNAUTHENTICATED_GROUP = "system:unauthenticated"
ANONYMOUS_USER = "system:anonymous"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
#: Users whose token puts them in system:masters: the local control plane's own components.
SYSTEM_USER_PREFIX = "system:devcluster:"
#: The real server's own calls to the front (informers, delegated reviews).
APISERVER_USER = f"{SYSTEM_USER_PREFIX}apiserver"
#: The user `vmsandbox dev` and the test fixtures act as, bound to cluster-admin at start.
ADMIN_USER = "admin"


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def superuser(self) -> bool:
        """In system:masters, which RBAC never restricts."""
        return MASTERS_GROUP in self.groups


#: Non-resource URLs the default discovery ClusterRoles grant (get) to every authenticated user.
DISCOVERY_URLS = (
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/openapi",
    "/openapi/*",
    "/version",
    "/version/",
)


def user_from_token(token: str) -> UserInfo:
    """Who a bearer token stands for (the token is the user name), with Kubernetes' groups."""
    token = token.strip()
    if not token:
        return UserInfo(ANONYMOUS_USER, (UNAUTHENTICATED_GROUP,))
    if token.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace, sep, name = token.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        if sep and namespace and name and ":" not in name:
            groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED_GROUP)
            return UserInfo(token, groups)
    if token.startswith(SYSTEM_USER_PREFIX):
        return UserInfo(token, (MASTERS_GROUP, AUTHENTICATED_GROUP))
    return UserInfo(token, (AUTHENTICATED_GROUP,))


def user_from_header(authorization: str) -> UserInfo:
    scheme, _, token = authorization.partition(" ")
    return user_from_token(token if scheme.lower() == "bearer" else "")


@dataclass(frozen=True)
class Attributes:
    """What is asked: a verb on a resource (group, resource, subresource, namespace, name) or on a path."""

    user: UserInfo
    verb: str
    resource_request: bool = True
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""


def request_attributes(
    user: UserInfo, method: str, path: str, query: Mapping[str, str], api: ApiPath | None
) -> Attributes:
    """The attributes kube-apiserver's RequestInfo resolver derives for a request."""
    if api is None or not api.resource:
        return Attributes(
            user=user, verb=method.lower() if method != "HEAD" else "get", resource_request=False, path=path
        )
    verb = api.verb(method, query)
    name, namespace = api.name, api.namespace
    if verb in ("list", "watch") and not name:
        # A list or watch of one object by field selector is authorized as that object.
        for term in query.get("fieldSelector", "").split(","):
            key, sep, value = term.partition("=")
            if key.strip() == "metadata.name" and sep and not value.startswith("="):
                name = value.strip()
    if not api.group and api.resource == "namespaces" and api.name:
        namespace = api.name
    return Attributes(
        user=user,
        verb=verb,
        group=api.group,
        resource=api.resource,
        subresource=api.subresource,
        namespace=namespace,
        name=name,
        path=path,
    )


def forbidden_message(attrs: Attributes, reason: str = "") -> str:
    """kube-apiserver's 403 message for ``attrs``."""
    who = f"User {attrs.user.name!r}".replace("'", '"')
    if not attrs.resource_request:
        text = f'{who} cannot {attrs.verb} path "{attrs.path}"'
        return f"forbidden: {text}" + (f": {reason}" if reason else "")
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    text = f'{who} cannot {attrs.verb} resource "{resource}" in API group "{attrs.group}" {where}'
    if reason:
        text += f": {reason}"
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    return (
        f'{qualified} "{attrs.name}" is forbidden: {text}'
        if attrs.name
        else f"{qualified} is forbidden: {text}"
    )


def forbidden_status(attrs: Attributes) -> dict[str, Any]:
    """The metav1.Status body of a 403 for ``attrs``."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": forbidden_message(attrs),
        "reason": "Forbidden",
        "code": 403,
    }
    if attrs.resource_request:
        details = {"group": attrs.group, "kind": attrs.resource}
        if attrs.name:
            details["name"] = attrs.name
        body["details"] = details
    return body


# -- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One ``PolicyRule``."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Rule:
        def strings(key: str) -> tuple[str, ...]:
            value = raw.get(key) or ()
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        return cls(
            verbs=strings("verbs"),
            api_groups=strings("apiGroups"),
            resources=strings("resources"),
            resource_names=strings("resourceNames"),
            non_resource_urls=strings("nonResourceURLs"),
        )

    def allows(self, attrs: Attributes) -> bool:
        if not ("*" in self.verbs or attrs.verb in self.verbs):
            return False
        if not attrs.resource_request:
            return any(_url_matches(url, attrs.path) for url in self.non_resource_urls)
        return (
            ("*" in self.api_groups or attrs.group in self.api_groups)
            and _resource_matches(self.resources, attrs.resource, attrs.subresource)
            and (not self.resource_names or attrs.name in self.resource_names)
        )


def _resource_matches(rule_resources: Iterable[str], resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for candidate in rule_resources:
        if candidate in ("*", combined):
            return True
        if subresource and candidate == f"*/{subresource}":
            return True
    return False


def _url_matches(rule_url: str, path: str) -> bool:
    if rule_url == "*" or rule_url == path:
        return True
    return rule_url.endswith("*") and path.startswith(rule_url[:-1])


# -- policy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    namespace: str  # "" for a ClusterRoleBinding
    role_kind: str
    role_name: str
    subjects: tuple[tuple[str, str, str], ...]  # (kind, name, namespace)

    def binds(self, user: UserInfo) -> bool:
        for kind, name, namespace in self.subjects:
            if kind == "User" and name == user.name:
                return True
            if kind == "Group" and name in user.groups:
                return True
            if kind == "ServiceAccount" and f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}" == user.name:
                return True
        return False


@dataclass
class Policy:
    """The RBAC objects of the cluster, indexed for evaluation."""

    cluster_roles: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    roles: dict[tuple[str, str], tuple[Rule, ...]] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]]) -> Policy:
        policy = cls()
        for obj in objects:
            kind, meta = obj.get("kind"), obj.get("metadata") or {}
            name, namespace = str(meta.get("name", "")), str(meta.get("namespace", "") or "")
            if kind in ("ClusterRole", "Role"):
                rules = tuple(Rule.parse(r) for r in obj.get("rules") or [] if isinstance(r, Mapping))
                if kind == "ClusterRole":
                    policy.cluster_roles[name] = rules
                else:
                    policy.roles[(namespace, name)] = rules
            elif kind in ("ClusterRoleBinding", "RoleBinding"):
                ref = obj.get("roleRef") or {}
                subjects = tuple(
                    (str(s.get("kind", "")), str(s.get("name", "")), str(s.get("namespace", "") or ""))
                    for s in obj.get("subjects") or []
                    if isinstance(s, Mapping)
                )
                policy.bindings.append(
                    Binding(
                        namespace=namespace if kind == "RoleBinding" else "",
                        role_kind=str(ref.get("kind", "")),
                        role_name=str(ref.get("name", "")),
                        subjects=subjects,
                    )
                )
        return policy

    def _rules(self, binding: Binding) -> tuple[Rule, ...]:
        if binding.role_kind == "ClusterRole":
            return self.cluster_roles.get(binding.role_name, ())
        if binding.role_kind == "Role" and binding.namespace:
            return self.roles.get((binding.namespace, binding.role_name), ())
        return ()

    def allows(self, attrs: Attributes) -> bool:
        if attrs.user.superuser:
            return True
        for binding in self.bindings:
            # A RoleBinding grants only inside its namespace, and never cluster-scoped or non-resource access.
            if binding.namespace and (not attrs.resource_request or binding.namespace != attrs.namespace):
                continue
            if binding.binds(attrs.user) and any(rule.allows(attrs) for rule in self._rules(binding)):
                return True
        return False


def bootstrap_objects() -> list[dict[str, Any]]:
    """The default roles every cluster has (those this project's components rely on) and the admin binding.

    Stored objects are custom resources, whose names cannot hold ``:``: ``system:discovery``
    and its siblings are called ``system-discovery`` here."""
    public_urls = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
    return [
        _cluster_role(
            "cluster-admin",
            [
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ],
        ),
        _cluster_role("system-discovery", [{"nonResourceURLs": list(DISCOVERY_URLS), "verbs": ["get"]}]),
        _cluster_role("system-public-info-viewer", [{"nonResourceURLs": public_urls, "verbs": ["get"]}]),
        _cluster_role(
            "system-basic-user",
            [
                {
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    "verbs": ["create"],
                },
                {
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["selfsubjectreviews"],
                    "verbs": ["create"],
                },
            ],
        ),
        _cluster_binding("cluster-admin", "cluster-admin", [("Group", MASTERS_GROUP), ("User", ADMIN_USER)]),
        _cluster_binding("system-discovery", "system-discovery", [("Group", AUTHENTICATED_GROUP)]),
        _cluster_binding(
            "system-public-info-viewer",
            "system-public-info-viewer",
            [("Group", AUTHENTICATED_GROUP), ("Group", UNAUTHENTICATED_GROUP)],
        ),
        _cluster_binding("system-basic-user", "system-basic-user", [("Group", AUTHENTICATED_GROUP)]),
    ]


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "rules": rules,
    }


def _cluster_binding(name: str, role: str, subjects: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": kind, "name": subject} for kind, subject in subjects],
    }
