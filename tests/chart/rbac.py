"""Kubernetes RBAC evaluated over rendered manifests, and request records checked against it.

The rules are the authorizer's (``rbac/v1`` ``PolicyRule`` matching): a request is allowed
when some rule bound to the user lists its API group, its resource (``res/sub`` for a
subresource), its verb and, when ``resourceNames`` is set, its object name. RoleBindings
grant only in their own namespace. Non-resource URLs are matched against what every
authenticated user has through the default ``system:discovery`` and
``system:public-info-viewer`` ClusterRoles.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vmsandbox.devcluster.rbac import DISCOVERY_URLS
from vmsandbox.devcluster.requestlog import RequestRecord

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Rule:
        return cls(
            tuple(raw.get("apiGroups", ())),
            tuple(raw.get("resources", ())),
            tuple(raw.get("verbs", ())),
            tuple(raw.get("resourceNames", ())),
        )

    def allows(self, group: str, resource: str, verb: str, name: str) -> bool:
        return (
            group in self.api_groups
            and resource in self.resources
            and verb in self.verbs
            and (not self.resource_names or name in self.resource_names)
        )


@dataclass
class Grants:
    """What one ServiceAccount may do: cluster-wide rules and rules per namespace."""

    cluster: list[Rule] = field(default_factory=list)
    namespaced: dict[str, list[Rule]] = field(default_factory=dict)

    def allows(self, group: str, resource: str, verb: str, namespace: str = "", name: str = "") -> bool:
        rules = self.cluster + (self.namespaced.get(namespace, []) if namespace else [])
        return any(rule.allows(group, resource, verb, name) for rule in rules)


def _subject_is(subject: dict[str, Any], namespace: str, name: str) -> bool:
    return (
        subject.get("kind") == "ServiceAccount"
        and subject.get("name") == name
        and subject.get("namespace") == namespace
    )


def grants_for(objects: Iterable[dict[str, Any]], namespace: str, service_account: str) -> Grants:
    objects = list(objects)
    roles = {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
    }
    grants = Grants()
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(_subject_is(s, namespace, service_account) for s in binding.get("subjects", [])):
            continue
        ref = binding["roleRef"]
        bound_ns = binding["metadata"].get("namespace", "") if binding["kind"] == "RoleBinding" else ""
        role_ns = bound_ns if ref["kind"] == "Role" else ""
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        if role is None:
            raise AssertionError(f"{binding['kind']} {binding['metadata']['name']} refers to missing {ref}")
        rules = [Rule.parse(r) for r in role.get("rules", [])]
        if binding["kind"] == "ClusterRoleBinding":
            grants.cluster += rules
        else:
            grants.namespaced.setdefault(bound_ns, []).extend(rules)
    return grants


def record_allowed(grants: Grants, record: RequestRecord) -> bool:
    if not record.resource:
        return record.verb in ("get", "head") and any(
            fnmatch.fnmatchcase(record.path, pattern) for pattern in DISCOVERY_URLS
        )
    resource = f"{record.resource}/{record.subresource}" if record.subresource else record.resource
    return grants.allows(record.group, resource, record.verb, record.namespace, record.name)


def service_account_of(record: RequestRecord) -> tuple[str, str] | None:
    """(namespace, name) when the request was made with a ServiceAccount's identity."""
    if not record.user.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    namespace, _, name = record.user.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    return (namespace, name) if namespace and name else None


def describe(record: RequestRecord) -> str:
    where = f" in {record.namespace}" if record.namespace else " (cluster-wide)"
    resource = f"{record.resource}/{record.subresource}" if record.subresource else record.resource
    target = f"{record.group or 'core'}/{resource}" if resource else record.path
    return f"{record.verb} {target}{where} [{record.method} {record.path}, {record.user_agent}]"
