"""The chart's ValidatingAdmissionPolicies on VMSandboxes, their CEL evaluated on admission requests.

Placement: nobody but the operator's service account may set or change the vmsandbox.io/node
label or status.nodeName. Agents: an agent's service account may change only sandboxes placed
on its own Node (from its token's node binding), only its finalizer and the status, and never
move them. The expressions run under PyPI ``cel-python`` with the ``request``, ``object``,
``oldObject`` and ``variables`` an API server passes. Not reproduced: the API server's CEL
type-checking and cost limits, and its dyn-typed comparisons with null (the policies avoid
``null`` so that both evaluators agree). The last test installs the rendered policies into the
local control plane, whose front evaluates them on real requests.
"""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.chart.helm import NAMESPACE, missing, one
from tests.chart.live_rbac import chart_rbac
from tests.security.tenant import SANDBOXES, grant_tenant, sandbox
from vmsandbox.devcluster.cluster import LocalCluster

Render = Callable[..., list[dict[str, Any]]]
OPERATOR = f"system:serviceaccount:{NAMESPACE}:vmsandbox-operator"
AGENT = f"system:serviceaccount:{NAMESPACE}:vmsandbox-agent"
TENANT = "alice"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
LABEL = "vmsandbox.io/node"


def _celpy() -> Any:
    try:
        import celpy
    except ImportError:
        missing("cel-python is not installed (pip install -e '.[test]')")
    return celpy


class AdmissionPolicy:
    """One ValidatingAdmissionPolicy: resource rules, match conditions, variables, validations."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.celpy = _celpy()
        env = self.celpy.Environment()
        spec = raw["spec"]
        assert spec["failurePolicy"] == "Fail"
        self.rules = spec["matchConstraints"]["resourceRules"]
        self.match = [env.program(env.compile(c["expression"])) for c in spec.get("matchConditions", [])]
        self.variables = [
            (v["name"], env.program(env.compile(v["expression"]))) for v in spec.get("variables", [])
        ]
        self.validations = [
            (env.program(env.compile(v["expression"])), v["message"]) for v in spec["validations"]
        ]

    def _matches_rules(self, request: dict[str, Any]) -> bool:
        resource = request["resource"]["resource"] + (
            f"/{request['subResource']}" if request["subResource"] else ""
        )
        return any(
            request["operation"] in rule["operations"] and resource in rule["resources"]
            for rule in self.rules
        )

    def admit(
        self,
        user: str,
        operation: str,
        new: dict[str, Any] | None,
        old: dict[str, Any] | None,
        *,
        node: str | None = None,
        subresource: str = "",
    ) -> list[str]:
        """Messages of the failed validations; [] when allowed or when the policy does not apply."""
        celpy = self.celpy
        extra = {NODE_NAME_EXTRA: [node]} if node else {}
        meta = (new or old or {}).get("metadata", {})
        request = {
            "operation": operation,
            "subResource": subresource,
            "kind": {"group": "vmsandbox.io", "version": "v1alpha1", "kind": "VMSandbox"},
            "resource": {"group": "vmsandbox.io", "version": "v1alpha1", "resource": "vmsandboxes"},
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "userInfo": {"username": user, "groups": ["system:authenticated"], "extra": extra},
        }
        if not self._matches_rules(request):
            return []
        activation: dict[str, Any] = {
            "request": celpy.json_to_cel(request),
            "object": celpy.json_to_cel(new),
            "oldObject": celpy.json_to_cel(old),
        }
        if not all(bool(p.evaluate(activation)) for p in self.match):
            return []
        values: dict[str, Any] = {}
        for name, program in self.variables:
            activation["variables"] = celpy.celtypes.MapType(
                {celpy.celtypes.StringType(k): v for k, v in values.items()}
            )
            values[name] = program.evaluate(activation)
        activation["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in values.items()}
        )
        return [message for program, message in self.validations if not bool(program.evaluate(activation))]


def _sandbox(node: str | None = None, node_name: str | None = None, **meta: Any) -> dict[str, Any]:
    labels = {"app": "demo", **({LABEL: node} if node else {})}
    obj: dict[str, Any] = {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandbox",
        "metadata": {"name": "sb", "namespace": "team-a", "labels": labels, **meta},
        "spec": {"image": "busybox", "resources": {"vcpus": 1, "memoryMiB": 256}},
    }
    if node_name:
        obj["status"] = {"phase": "Scheduled", "nodeName": node_name}
    return obj


@pytest.fixture(scope="module")
def placement(render: Render) -> AdmissionPolicy:
    return AdmissionPolicy(one(render(), "ValidatingAdmissionPolicy", "-placement"))


@pytest.fixture(scope="module")
def agents(render: Render) -> AdmissionPolicy:
    return AdmissionPolicy(one(render(), "ValidatingAdmissionPolicy", "-sandbox-restriction"))


def test_policies_are_bound_and_deny(render: Render) -> None:
    objects = render()
    for suffix in ("-placement", "-sandbox-restriction"):
        policy = one(objects, "ValidatingAdmissionPolicy", suffix)
        binding = one(objects, "ValidatingAdmissionPolicyBinding", suffix)
        assert binding["spec"]["policyName"] == policy["metadata"]["name"]
        assert binding["spec"]["validationActions"] == ["Deny"]


def test_placement_policy_is_always_installed(helm: Any) -> None:
    objects = helm.render(sets=["agent.nodeRestriction.enabled=false", "rbac.create=false"])
    assert one(objects, "ValidatingAdmissionPolicy", "-placement")


def test_tenant_may_not_place_its_sandbox(placement: AdmissionPolicy) -> None:
    label_message = f'metadata.labels["{LABEL}"]: only the vmsandbox operator may set or change it'
    denied = placement.admit(TENANT, "CREATE", _sandbox(node="kvm-2"), None)
    assert len(denied) == 1 and denied[0].startswith(label_message), denied
    assert placement.admit(TENANT, "CREATE", _sandbox(), None) == []
    # Later: adding, changing or removing the label is refused; other labels are the tenant's.
    placed = _sandbox(node="kvm-1", node_name="kvm-1")
    for new in (_sandbox(node="kvm-2", node_name="kvm-1"), _sandbox(node_name="kvm-1")):
        assert placement.admit(TENANT, "UPDATE", new, placed)[0].startswith(label_message)
    assert placement.admit(TENANT, "UPDATE", _sandbox(node="kvm-1"), _sandbox())[0].startswith(label_message)
    relabelled = copy.deepcopy(placed)
    relabelled["metadata"]["labels"]["app"] = "other"
    assert placement.admit(TENANT, "UPDATE", relabelled, placed) == []


def test_only_the_operator_records_status_node_name(placement: AdmissionPolicy) -> None:
    placed = _sandbox(node="kvm-1", node_name="kvm-1")
    moved = _sandbox(node="kvm-1", node_name="kvm-2")
    denied = placement.admit(AGENT, "UPDATE", moved, placed, node="kvm-1", subresource="status")
    assert denied == [
        "status.nodeName: only the vmsandbox operator may set or change it (placements are its decision)"
    ]
    running = copy.deepcopy(placed)
    running["status"]["phase"] = "Running"
    assert placement.admit(AGENT, "UPDATE", running, placed, node="kvm-1", subresource="status") == []
    # The operator places, records and reschedules.
    assert placement.admit(OPERATOR, "UPDATE", placed, _sandbox()) == []
    assert (
        placement.admit(
            OPERATOR,
            "UPDATE",
            _sandbox(node="kvm-1", node_name="kvm-1"),
            _sandbox(node="kvm-1"),
            subresource="status",
        )
        == []
    )


def test_agent_may_not_relabel_a_sandbox_to_another_node(
    placement: AdmissionPolicy, agents: AdmissionPolicy
) -> None:
    placed = _sandbox(node="kvm-1", node_name="kvm-1")
    moved = _sandbox(node="kvm-2", node_name="kvm-1")
    assert agents.admit(AGENT, "UPDATE", moved, placed, node="kvm-1") == [
        "a vmsandbox node agent may change only sandboxes placed on its own Node, and may not move them",
        "a vmsandbox node agent may change only its finalizer (vmsandbox.io/node-agent) and the status",
    ]
    assert placement.admit(AGENT, "UPDATE", moved, placed, node="kvm-1") != []


def test_agent_writes_its_finalizer_and_status_on_its_own_node(agents: AdmissionPolicy) -> None:
    placed = _sandbox(node="kvm-1", node_name="kvm-1", finalizers=["vmsandbox.io/operator"])
    held = _sandbox(
        node="kvm-1", node_name="kvm-1", finalizers=["vmsandbox.io/operator", "vmsandbox.io/node-agent"]
    )
    assert agents.admit(AGENT, "UPDATE", held, placed, node="kvm-1") == []
    assert agents.admit(AGENT, "UPDATE", placed, held, node="kvm-1") == []  # and removes it
    running = copy.deepcopy(held)
    running["status"]["phase"] = "Running"
    assert agents.admit(AGENT, "UPDATE", running, held, node="kvm-1", subresource="status") == []


@pytest.mark.parametrize(
    ("what", "node", "edit"),
    [
        (
            "another node's sandbox",
            "kvm-2",
            lambda o: o["metadata"]["finalizers"].append("vmsandbox.io/node-agent"),
        ),
        ("no node binding", None, lambda o: o["metadata"]["finalizers"].append("vmsandbox.io/node-agent")),
        ("another finalizer", "kvm-1", lambda o: o["metadata"]["finalizers"].append("example.com/keep")),
        ("removing the operator's finalizer", "kvm-1", lambda o: o["metadata"]["finalizers"].clear()),
        ("the spec", "kvm-1", lambda o: o["spec"].update(image="evil")),
        ("an annotation", "kvm-1", lambda o: o["metadata"].update(annotations={"x": "y"})),
        ("a label", "kvm-1", lambda o: o["metadata"]["labels"].update(app="x")),
    ],
)
def test_agent_may_not(
    agents: AdmissionPolicy, what: str, node: str | None, edit: Callable[[dict[str, Any]], None]
) -> None:
    old = _sandbox(node="kvm-1", node_name="kvm-1", finalizers=["vmsandbox.io/operator"])
    new = copy.deepcopy(old)
    edit(new)
    assert agents.admit(AGENT, "UPDATE", new, old, node=node) != [], what


def test_agent_may_not_create_or_delete_and_others_are_not_its_concern(agents: AdmissionPolicy) -> None:
    obj = _sandbox(node="kvm-1")
    assert "a vmsandbox node agent may not create or delete sandboxes" in agents.admit(
        AGENT, "CREATE", obj, None, node="kvm-1"
    )
    assert "a vmsandbox node agent may not create or delete sandboxes" in agents.admit(
        AGENT, "DELETE", None, obj, node="kvm-1"
    )
    assert agents.admit(TENANT, "UPDATE", _sandbox(node="kvm-2"), obj) == []
    assert agents.admit(OPERATOR, "UPDATE", _sandbox(node="kvm-2"), obj) == []


# -- live: the chart's policies in the local control plane's front -------------------------------

ADMISSION_API = "/apis/admissionregistration.k8s.io/v1"


@contextlib.contextmanager
def _installed(kube: LocalCluster, objects: list[dict[str, Any]]) -> Iterator[None]:
    plurals = {
        "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    }
    created: list[str] = []
    try:
        for obj in objects:
            url = f"{ADMISSION_API}/{plurals[obj['kind']]}"
            resp = kube.http("POST", url, json=obj)
            assert resp.status_code == 201, resp.text
            created.append(f"{url}/{obj['metadata']['name']}")
        yield
    finally:
        for url in created:
            kube.http("DELETE", url)


@pytest.mark.kube
def test_front_enforces_the_charts_policies(helm: Any, kube: LocalCluster, kube_namespace: str) -> None:
    """A tenant's own label and an agent's relabel are refused by the real policies, live."""
    release = kube_namespace
    policies = [
        o
        for o in helm.render(namespace=release)
        if o["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
        and not o["metadata"]["name"].endswith("-node-restriction")
    ]
    assert len(policies) == 4
    tenant = f"tenant-{uuid.uuid4().hex[:6]}"
    grant_tenant(kube, kube_namespace, tenant)
    url = SANDBOXES.format(ns=kube_namespace)
    operator = {"Authorization": f"Bearer system:serviceaccount:{release}:vmsandbox-operator"}
    agent = {"Authorization": f"Bearer system:serviceaccount:{release}:vmsandbox-agent"}
    merge = {"Content-Type": "application/merge-patch+json"}
    with chart_rbac(kube, helm, release), _installed(kube, policies):
        attack = sandbox("attack")
        attack["metadata"]["labels"] = {LABEL: "kvm-2"}
        resp = kube.http("POST", url, json=attack, headers={"Authorization": f"Bearer {tenant}"})
        assert resp.status_code == 403, resp.text
        assert resp.json()["message"] == (
            f'vmsandboxes.vmsandbox.io "attack" is forbidden: ValidatingAdmissionPolicy '
            f"'vmsandbox-placement' with binding 'vmsandbox-placement' denied request: "
            f'metadata.labels["{LABEL}"]: only the vmsandbox operator may set or change it '
            "(placements are its decision)"
        )
        assert kube.http("GET", f"{url}/attack").status_code == 404
        resp = kube.http("POST", url, json=sandbox("honest"), headers={"Authorization": f"Bearer {tenant}"})
        assert resp.status_code == 201, resp.text
        # The operator places it; an agent then tries to move it to another node.
        placed = {"metadata": {"labels": {LABEL: "kvm-1"}}}
        resp = kube.http("PATCH", f"{url}/honest", json=placed, headers={**operator, **merge})
        assert resp.status_code == 200, resp.text
        moved = {"metadata": {"labels": {LABEL: "kvm-2"}}}
        resp = kube.http("PATCH", f"{url}/honest", json=moved, headers={**agent, **merge})
        assert resp.status_code == 403, resp.text
        assert (
            "denied request" in resp.json()["message"]
            and "ValidatingAdmissionPolicy" in resp.json()["message"]
        )
        assert kube.http("GET", f"{url}/honest").json()["metadata"]["labels"][LABEL] == "kvm-1"
    # Without the policies (as in the rest of the tests), the same write goes through.
    assert kube.http("PATCH", f"{url}/honest", json=moved, headers=merge).status_code == 200
