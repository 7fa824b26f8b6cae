"""RBAC: no wildcards, least privilege, and every API call the programs make is granted.

The calls come from the local control plane's request log (``vmsandbox.devcluster``): a short
operator scenario recorded here, and any log named by ``VMSANDBOX_API_CALLS`` (JSON lines of
``RequestRecord``, e.g. from the end-to-end tests). The programs must run with the chart's
ServiceAccount identities (``system:serviceaccount:<ns>:vmsandbox-operator`` / ``-agent``),
which the front records as the user.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import NAMESPACE, RELEASE, Helm, by_kind, one, value_files
from tests.chart.rbac import Grants, describe, grants_for, record_allowed, service_account_of
from vmsandbox.devcluster.apipath import parse_api_path
from vmsandbox.devcluster.requestlog import RequestRecord, read_request_log

Render = Callable[..., list[dict[str, Any]]]
CASES: list[tuple[Path, ...]] = [(), *[(p,) for p in value_files()]]
API_CALLS_ENV = "VMSANDBOX_API_CALLS"
OPERATOR_SA = f"{RELEASE}-operator"
AGENT_SA = f"{RELEASE}-agent"
#: Verbs that hand out more than the rules say: none of them belongs in the chart.
ESCALATING_VERBS = {"escalate", "bind", "impersonate", "*"}


def _ids(case: tuple[Path, ...]) -> str:
    return case[0].stem if case else "defaults"


def _rules(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
        for rule in role.get("rules", []):
            yield f"{role['kind']}/{role['metadata']['name']}", rule


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_no_wildcards_or_escalating_verbs(render: Render, case: tuple[Path, ...]) -> None:
    objects = render(*case)
    assert by_kind(objects, "ClusterRole") and by_kind(objects, "Role")
    for where, rule in _rules(objects):
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(key, [])), f"{where}: wildcard in {key}: {rule}"
        assert not ESCALATING_VERBS & set(rule["verbs"]), f"{where}: {rule}"
        assert "nonResourceURLs" not in rule, f"{where}: {rule}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_workloads_run_as_the_bound_service_accounts(render: Render, case: tuple[Path, ...]) -> None:
    objects = render(*case)
    accounts = {sa["metadata"]["name"] for sa in by_kind(objects, "ServiceAccount")}
    for workload, account in (
        (one(objects, "Deployment"), OPERATOR_SA),
        (one(objects, "DaemonSet"), AGENT_SA),
    ):
        pod = workload["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account
        assert account in accounts
        assert pod["automountServiceAccountToken"] is True
        grants = grants_for(objects, NAMESPACE, account)
        assert grants.cluster and grants.namespaced[NAMESPACE]


def _grants(render: Render) -> tuple[Grants, Grants]:
    objects = render()
    return grants_for(objects, NAMESPACE, OPERATOR_SA), grants_for(objects, NAMESPACE, AGENT_SA)


def _grants_of(render: Render, who: str) -> Grants:
    """The grants of ``who``: "operator" or "agent"."""
    operator, agent = _grants(render)
    return operator if who == "operator" else agent


#: Who may and may not call what: (who, group, resource, namespace, granted verbs, refused verbs).
#: Granted: what contract point 5 and the programs ask for. Refused: what neither may do, though a
#: sloppier chart would allow it. Namespace "" = cluster-wide; "sandboxes" = some user namespace;
#: NAMESPACE = the release's.
ACCESS: list[tuple[str, str, str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("operator", "vmsandbox.io", "vmsandboxes", "", ("watch", "list"), ()),
    ("operator", "vmsandbox.io", "vmsandboxes", "sandboxes", ("patch", "delete"), ("create",)),
    ("operator", "vmsandbox.io", "vmsandboxes/status", "sandboxes", ("patch",), ()),
    ("operator", "", "nodes", "", ("watch",), ("patch",)),
    ("operator", "vmsandbox.io", "vmsandboxpools", "", ("watch", "list"), ()),
    ("operator", "vmsandbox.io", "vmsandboxpools/status", "sandboxes", ("patch", "update"), ()),
    ("operator", "", "events", "sandboxes", ("create",), ()),
    ("operator", "coordination.k8s.io", "leases", NAMESPACE, ("create", "patch"), ()),
    ("operator", "coordination.k8s.io", "leases", "", ("watch",), ()),
    ("operator", "apiextensions.k8s.io", "customresourcedefinitions", "", ("watch",), ()),
    ("agent", "vmsandbox.io", "vmsandboxes", "", ("watch",), ()),
    ("agent", "vmsandbox.io", "vmsandboxes", "sandboxes", ("get", "patch"), ("delete", "create")),
    ("agent", "vmsandbox.io", "vmsandboxes/status", "sandboxes", ("update",), ()),
    ("agent", "", "nodes", "", ("patch",), ("list", "delete")),
    ("agent", "vmsandbox.io", "vmsandboxpools", "", ("list", "watch"), ()),
    ("agent", "vmsandbox.io", "vmsandboxpools", "sandboxes", ("get",), ("patch",)),
    ("agent", "", "events", "sandboxes", ("create",), ()),
    ("agent", "", "namespaces", "", ("get",), ("list", "patch")),
    ("agent", "coordination.k8s.io", "leases", NAMESPACE, ("get", "create", "update"), ("delete",)),
    ("agent", "authentication.k8s.io", "tokenreviews", "", ("create",), ()),
    ("agent", "authorization.k8s.io", "subjectaccessreviews", "", ("create",), ()),
    # The aggregated API relays to agents as the operator (the agent's SubjectAccessReview).
    ("operator", "vmsandbox.io", "vmsandboxes/exec", "sandboxes", ("create",), ()),
    ("operator", "vmsandbox.io", "vmsandboxes/attach", "sandboxes", ("create",), ()),
    ("operator", "vmsandbox.io", "vmsandboxes/files", "sandboxes", ("create",), ()),
    ("operator", "vmsandbox.io", "vmsandboxes/portforward", "sandboxes", ("create",), ()),
    ("operator", "vmsandbox.io", "vmsandboxes/log", "sandboxes", ("get",), ()),
    ("agent", "", "nodes/status", "", (), ("patch",)),
    ("agent", "coordination.k8s.io", "leases", "kube-node-lease", (), ("update",)),
    ("agent", "", "pods", "", (), ("list",)),
    ("operator", "coordination.k8s.io", "leases", "kube-system", (), ("update",)),
    ("operator", "", "namespaces", "", (), ("list",)),
    ("operator", "", "pods", "sandboxes", (), ("create",)),
    ("operator", "", "configmaps", "kube-system", (), ("get", "list")),
    ("operator", "vmsandbox.io", "vmsandboxpools", "sandboxes", (), ("update", "delete")),
    ("operator", "vmsandbox.io", "vmsandboxpools/scale", "sandboxes", (), ("update",)),
    ("agent", "vmsandbox.io", "vmsandboxpools/status", "sandboxes", (), ("patch",)),
]
#: One case a call: (who, group, resource, verb, namespace).
NEEDED = [(who, group, res, verb, ns) for who, group, res, ns, granted, _ in ACCESS for verb in granted]
REFUSED = [(who, group, res, verb, ns) for who, group, res, ns, _, refused in ACCESS for verb in refused]


@pytest.mark.parametrize(("who", "group", "resource", "verb", "ns"), NEEDED)
def test_contract_calls_are_granted(
    render: Render, who: str, group: str, resource: str, verb: str, ns: str
) -> None:
    grants = _grants_of(render, who)
    assert grants.allows(group, resource, verb, ns, "x"), f"{who} may not {verb} {group}/{resource} in {ns!r}"


@pytest.mark.parametrize(("who", "group", "resource", "verb", "ns"), REFUSED)
def test_calls_beyond_the_contract_are_refused(
    render: Render, who: str, group: str, resource: str, verb: str, ns: str
) -> None:
    grants = _grants_of(render, who)
    assert not grants.allows(group, resource, verb, ns, "x"), f"{who} may {verb} {group}/{resource} in {ns!r}"


def test_no_role_reads_secrets_or_pods(render: Render) -> None:
    for case in CASES:
        for where, rule in _rules(render(*case)):
            resources = set(rule["resources"])
            if rule.get("resourceNames") == ["extension-apiserver-authentication"]:
                resources -= {"configmaps"}  # the requestheader CA, published for aggregated servers
            assert not {"secrets", "pods", "pods/exec", "configmaps"} & resources, where


def _record(method: str, path: str, user: str, query: dict[str, str] | None = None) -> RequestRecord:
    api = parse_api_path(path)
    assert api is not None
    return RequestRecord.of(method, path, api, query or {}, user=user)


def test_checker_reports_a_call_outside_the_grants(render: Render) -> None:
    """The checker itself: the same request passes as the operator and fails as the agent."""
    operator, agent = _grants(render)
    delete = _record("DELETE", "/apis/vmsandbox.io/v1alpha1/namespaces/team-a/vmsandboxes/hello", "u")
    assert record_allowed(operator, delete) and not record_allowed(agent, delete)
    watch = _record("GET", "/apis/vmsandbox.io/v1alpha1/vmsandboxes", "u", {"watch": "true"})
    assert watch.verb == "watch" and record_allowed(agent, watch)
    discovery = _record("GET", "/apis/vmsandbox.io/v1alpha1", "u")
    assert record_allowed(agent, discovery)


def check_records(helm: Helm, records: list[RequestRecord]) -> int:
    """Assert every ServiceAccount call of the operator or agent is granted; returns how many were checked."""
    by_account: dict[tuple[str, str], list[RequestRecord]] = {}
    for record in records:
        account = service_account_of(record)
        if account and account[1] in (OPERATOR_SA, AGENT_SA):
            by_account.setdefault(account, []).append(record)
    denied: list[str] = []
    for (namespace, account), calls in by_account.items():
        grants = grants_for(helm.render(namespace=namespace), namespace, account)
        denied += sorted({f"{account}: {describe(c)}" for c in calls if not record_allowed(grants, c)})
    assert not denied, "calls the chart's RBAC would refuse:\n" + "\n".join(denied)
    return sum(len(calls) for calls in by_account.values())


def test_recorded_api_calls_are_granted(helm: Helm) -> None:
    """Every call in the recording named by VMSANDBOX_API_CALLS (e.g. from the end-to-end tests)."""
    source = os.environ.get(API_CALLS_ENV)
    if not source:
        pytest.skip(f"no recording: set {API_CALLS_ENV} to a request log of the end-to-end tests")
    paths = [Path(p) for p in source.split(os.pathsep) if p]
    records = [r for path in paths for r in read_request_log(path)]
    checked = check_records(helm, records)
    if checked == 0:
        pytest.skip(f"{source} holds no calls made as {OPERATOR_SA} or {AGENT_SA}")
