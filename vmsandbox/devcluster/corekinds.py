"""The core Kubernetes kinds the front emulates, each backed by a look-alike CRD in the real server.

The standalone CRD API server has no built-in kinds. Each kind here is stored as a custom
resource of a private group (``<group>.devcluster.vmsandbox.io``) that the front hides from
discovery, so Nodes, Leases, Events and Namespaces still get real resourceVersions, watches,
selectors, conflicts and status-subresource rules from the real API machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PRIVATE_SUFFIX = "devcluster.vmsandbox.io"


@dataclass(frozen=True, kw_only=True)
class CoreKind:
    """One emulated kind: its public coordinates and the look-alike CRD that stores it."""

    group: str  # "" for the legacy core group served under /api/v1
    #: Every emulated kind is served at v1, as on the real server.
    version: str = "v1"
    plural: str
    kind: str
    namespaced: bool
    status: bool = False
    short_names: tuple[str, ...] = ()
    #: Field paths (without the leading dot) that field selectors may use, as on a real cluster.
    selectable: tuple[str, ...] = ()
    #: Schema properties declared so that ``selectable`` fields have a scalar type.
    properties: dict[str, Any] = field(default_factory=dict)
    #: Plural of the look-alike CRD when it cannot be the public one: a CRD called
    #: "namespaces" is unreachable, as the server reads /namespaces/<name> as a namespace.
    stored_as: str = ""
    #: Table columns as kubectl shows them: (name, type, JSON path); Age is appended.
    columns: tuple[tuple[str, str, str], ...] = ()

    @property
    def private_plural(self) -> str:
        return self.stored_as or self.plural

    @property
    def private_group(self) -> str:
        return f"{self.group.removesuffix('.k8s.io') or 'core'}.{PRIVATE_SUFFIX}"

    @property
    def public_api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def private_api_version(self) -> str:
        return f"{self.private_group}/{self.version}"

    @property
    def crd_name(self) -> str:
        return f"{self.private_plural}.{self.private_group}"

    def crd(self) -> dict[str, Any]:
        """The look-alike CustomResourceDefinition manifest."""
        schema: dict[str, Any] = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": self.properties,
        }
        version: dict[str, Any] = {
            "name": self.version,
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": schema},
        }
        if self.status:
            version["subresources"] = {"status": {}}
        if self.columns:
            version["additionalPrinterColumns"] = [
                {"name": name, "type": kind, "jsonPath": path}
                for name, kind, path in (*self.columns, ("Age", "date", ".metadata.creationTimestamp"))
            ]
        if self.selectable:
            version["selectableFields"] = [{"jsonPath": f".{p}"} for p in self.selectable]
        names: dict[str, Any] = {
            "plural": self.private_plural,
            "singular": self.private_plural.removesuffix("s") if self.stored_as else self.kind.lower(),
            "kind": self.kind,
            "listKind": f"{self.kind}List",
        }
        if self.short_names:
            names["shortNames"] = list(self.short_names)
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": self.crd_name},
            "spec": {
                "group": self.private_group,
                "scope": "Namespaced" if self.namespaced else "Cluster",
                "names": names,
                "versions": [version],
            },
        }


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": props}


_S = {"type": "string"}

#: Public group of the RBAC kinds, which the front enforces (vmsandbox.devcluster.rbac).
RBAC_GROUP = "rbac.authorization.k8s.io"
#: Admission policies, which the front evaluates for custom resources (vmsandbox.devcluster.admission).
ADMISSION_GROUP = "admissionregistration.k8s.io"
#: APIServices and the Services they name: the aggregator's routing table.
AGGREGATION_GROUP = "apiregistration.k8s.io"

#: What identifies the object an Event is about, in either API group.
_SUBJECT_FIELDS = ("kind", "namespace", "name", "uid", "apiVersion")


def _event_kind(
    group: str,
    subject: str,
    *,
    subject_selectable: tuple[str, ...],
    subject_properties: tuple[str, ...],
    fields: tuple[str, ...],
    columns: tuple[tuple[str, str, str], ...] = (),
) -> CoreKind:
    """Event as one API group serves it: the groups differ in what the field naming the event's
    object is called (``subject``) and which of its and the event's own ``fields`` are selectable."""
    return CoreKind(
        group=group,
        plural="events",
        kind="Event",
        namespaced=True,
        short_names=("ev",),
        selectable=(*(f"{subject}.{name}" for name in subject_selectable), *fields),
        columns=columns,
        properties={subject: _obj(**dict.fromkeys(subject_properties, _S)), **dict.fromkeys(fields, _S)},
    )


CORE_KINDS: tuple[CoreKind, ...] = (
    CoreKind(
        group="",
        plural="namespaces",
        kind="Namespace",
        namespaced=False,
        status=True,
        short_names=("ns",),
        selectable=("status.phase",),
        properties={"status": _obj(phase=_S)},
        stored_as="corenamespaces",
        columns=(("Status", "string", ".status.phase"),),
    ),
    CoreKind(
        group="",
        plural="nodes",
        kind="Node",
        namespaced=False,
        status=True,
        short_names=("no",),
        selectable=("spec.unschedulable", "spec.providerID"),
        properties={"spec": _obj(unschedulable={"type": "boolean"}, providerID=_S)},
    ),
    _event_kind(
        "",
        "involvedObject",
        subject_selectable=(*_SUBJECT_FIELDS, "fieldPath"),
        subject_properties=(*_SUBJECT_FIELDS, "fieldPath", "resourceVersion"),
        fields=("reason", "type"),
        columns=(
            ("Type", "string", ".type"),
            ("Reason", "string", ".reason"),
            ("Object", "string", ".involvedObject.name"),
            ("Message", "string", ".message"),
        ),
    ),
    _event_kind(
        "events.k8s.io",
        "regarding",
        subject_selectable=_SUBJECT_FIELDS,
        subject_properties=(*_SUBJECT_FIELDS, "fieldPath"),
        fields=("reason", "type", "reportingController"),
    ),
    # The apiserver's own informers list and watch Services (webhook service resolution).
    CoreKind(group="", plural="services", kind="Service", namespaced=True, status=True, short_names=("svc",)),
    CoreKind(
        group="coordination.k8s.io",
        plural="leases",
        kind="Lease",
        namespaced=True,
        properties={"spec": _obj(holderIdentity=_S)},
        columns=(("Holder", "string", ".spec.holderIdentity"),),
    ),
    CoreKind(group=RBAC_GROUP, plural="clusterroles", kind="ClusterRole", namespaced=False),
    CoreKind(group=RBAC_GROUP, plural="clusterrolebindings", kind="ClusterRoleBinding", namespaced=False),
    CoreKind(
        group=ADMISSION_GROUP,
        plural="validatingadmissionpolicies",
        kind="ValidatingAdmissionPolicy",
        namespaced=False,
        status=True,
    ),
    CoreKind(
        group=ADMISSION_GROUP,
        plural="validatingadmissionpolicybindings",
        kind="ValidatingAdmissionPolicyBinding",
        namespaced=False,
    ),
    # What the front's aggregator routes by (vmsandbox.devcluster.aggregator).
    CoreKind(group=AGGREGATION_GROUP, plural="apiservices", kind="APIService", namespaced=False, status=True),
    # kube-system/extension-apiserver-authentication tells aggregated servers the requestheader CA.
    CoreKind(group="", plural="configmaps", kind="ConfigMap", namespaced=True, short_names=("cm",)),
    CoreKind(group=RBAC_GROUP, plural="roles", kind="Role", namespaced=True),
    CoreKind(group=RBAC_GROUP, plural="rolebindings", kind="RoleBinding", namespaced=True),
)

RBAC_KINDS: tuple[CoreKind, ...] = tuple(k for k in CORE_KINDS if k.group == RBAC_GROUP)
ADMISSION_KINDS: tuple[CoreKind, ...] = tuple(k for k in CORE_KINDS if k.group == ADMISSION_GROUP)
AGGREGATION_KINDS: tuple[CoreKind, ...] = tuple(
    k for k in CORE_KINDS if k.group == AGGREGATION_GROUP or (not k.group and k.plural == "services")
)

#: (public group, version, plural) -> kind.
BY_PUBLIC: dict[tuple[str, str, str], CoreKind] = {(k.group, k.version, k.plural): k for k in CORE_KINDS}
#: Public group names the front serves discovery for (the legacy core group is "").
EMULATED_GROUPS: dict[str, tuple[CoreKind, ...]] = {
    g: tuple(k for k in CORE_KINDS if k.group == g) for g in {k.group for k in CORE_KINDS}
}
#: (private group, plural of the look-alike CRD) -> kind.
BY_PRIVATE: dict[tuple[str, str], CoreKind] = {(k.private_group, k.private_plural): k for k in CORE_KINDS}
PRIVATE_GROUPS: frozenset[str] = frozenset(k.private_group for k in CORE_KINDS)
#: Namespaces every cluster has.
BUILTIN_NAMESPACES: tuple[str, ...] = ("default", "kube-system", "kube-public", "kube-node-lease")


def is_private_group(group: str) -> bool:
    return group.endswith(f".{PRIVATE_SUFFIX}")
