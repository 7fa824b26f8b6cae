"""The agents' ValidatingAdmissionPolicy, its CEL evaluated on admission requests.

RBAC lets every agent patch every Node; the policy must narrow that to vmsandbox.io/ labels
and annotations on the agent's own Node. The expressions are evaluated with PyPI
``cel-python`` on the ``request``/``object``/``oldObject`` an API server would pass. What is
not reproduced: the API server's CEL type-checking and cost limits (on a cluster a policy
whose expressions do not compile is reported in its status and, with failurePolicy Fail,
denies the matched requests).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.chart.helm import NAMESPACE, by_kind, missing, one

Render = Callable[..., list[dict[str, Any]]]
AGENT_USER = f"system:serviceaccount:{NAMESPACE}:vmsandbox-agent"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def _celpy() -> Any:
    try:
        import celpy
    except ImportError:
        missing("cel-python is not installed (pip install -e '.[test]')")
    return celpy


def _node(
    name: str = "kvm-1", labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "taints": [{"key": "dedicated", "value": "vm", "effect": "NoSchedule"}],
        },
    }


BASE = _node(
    labels={"kubernetes.io/hostname": "kvm-1", "vmsandbox.io/kvm": "true"},
    annotations={"node.alpha.kubernetes.io/ttl": "0"},
)


class Policy:
    def __init__(self, raw: dict[str, Any]) -> None:
        celpy = _celpy()
        self._celpy = celpy
        env = celpy.Environment()
        spec = raw["spec"]
        self.match = [env.program(env.compile(c["expression"])) for c in spec["matchConditions"]]
        self.validations = [
            (env.program(env.compile(v["expression"])), v["message"]) for v in spec["validations"]
        ]
        self.rules = spec["matchConstraints"]["resourceRules"]

    def admit(self, user: str, old: dict[str, Any], new: dict[str, Any], node_name: str | None) -> list[str]:
        """Messages of the failed validations; [] when allowed or when the policy does not apply."""
        extra = {NODE_NAME_EXTRA: [node_name]} if node_name else {}
        request = {
            "operation": "UPDATE",
            "kind": {"group": "", "version": "v1", "kind": "Node"},
            "resource": {"group": "", "version": "v1", "resource": "nodes"},
            "name": new["metadata"]["name"],
            "userInfo": {"username": user, "groups": ["system:serviceaccounts"], "extra": extra},
        }
        activation = {
            "request": self._celpy.json_to_cel(request),
            "object": self._celpy.json_to_cel(new),
            "oldObject": self._celpy.json_to_cel(old),
        }
        if not all(bool(p.evaluate(activation)) for p in self.match):
            return []
        return [message for program, message in self.validations if not bool(program.evaluate(activation))]


@pytest.fixture(scope="module")
def policy(render: Render) -> Policy:
    return Policy(one(render(), "ValidatingAdmissionPolicy", "-node-restriction"))


def _changed(**edits: Any) -> dict[str, Any]:
    node = copy.deepcopy(BASE)
    for key, value in edits.items():
        if key == "labels":
            node["metadata"]["labels"] = value
        elif key == "annotations":
            node["metadata"]["annotations"] = value
        elif key == "taints":
            node["spec"]["taints"] = value
    return node


def test_policy_is_bound_and_denies(render: Render) -> None:
    objects = render()
    policy = one(objects, "ValidatingAdmissionPolicy", "-node-restriction")
    binding = one(objects, "ValidatingAdmissionPolicyBinding", "-node-restriction")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes"]}
    ]


def test_policy_can_be_turned_off(helm: Any) -> None:
    objects = helm.render(sets=["agent.nodeRestriction.enabled=false"])
    # What stays is the placement policy, which is always installed.
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        assert [o["metadata"]["name"] for o in by_kind(objects, kind)] == ["vmsandbox-placement"]


def test_agent_publishes_on_its_own_node(policy: Policy) -> None:
    labels = {**BASE["metadata"]["labels"], "vmsandbox.io/agent": "ready"}
    annotations = {
        **BASE["metadata"]["annotations"],
        "vmsandbox.io/capacity": '{"vcpus": 4, "memoryMiB": 8192}',
        "vmsandbox.io/agent-endpoint": "http://10.244.1.7:8081",
    }
    new = _changed(labels=labels, annotations=annotations)
    assert policy.admit(AGENT_USER, BASE, new, "kvm-1") == []
    # ...and takes its label off again.
    assert policy.admit(AGENT_USER, new, BASE, "kvm-1") == []


def test_agent_publishes_on_a_node_without_labels_or_annotations(policy: Policy) -> None:
    bare = _node()
    new = _node(labels={"vmsandbox.io/agent": "ready"}, annotations={"vmsandbox.io/capacity": "{}"})
    assert policy.admit(AGENT_USER, bare, new, "kvm-1") == []


def test_agent_may_not_touch_another_node(policy: Policy) -> None:
    new = _changed(labels={**BASE["metadata"]["labels"], "vmsandbox.io/agent": "ready"})
    assert policy.admit(AGENT_USER, BASE, new, "kvm-2") == [
        "a vmsandbox node agent may change only the Node it runs on"
    ]
    assert policy.admit(AGENT_USER, BASE, new, None) == [
        "a vmsandbox node agent may change only the Node it runs on"
    ]


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"labels": {**BASE["metadata"]["labels"], "node-role.kubernetes.io/control-plane": ""}}, "labels"),
        ({"labels": {"kubernetes.io/hostname": "kvm-1"}}, None),  # removes vmsandbox.io/kvm: allowed
        ({"labels": {"vmsandbox.io/kvm": "true"}}, "labels"),  # removes kubernetes.io/hostname
        ({"labels": {**BASE["metadata"]["labels"], "kubernetes.io/hostname": "evil"}}, "labels"),
        ({"annotations": {}}, "annotations"),
        ({"annotations": {"node.alpha.kubernetes.io/ttl": "30"}}, "annotations"),
        ({"taints": []}, "spec"),
    ],
)
def test_agent_may_change_only_its_own_marks(
    policy: Policy, edits: dict[str, Any], message: str | None
) -> None:
    denied = policy.admit(AGENT_USER, BASE, _changed(**edits), "kvm-1")
    if message is None:
        assert denied == []
    else:
        assert len(denied) == 1 and message in denied[0], denied


def test_policy_ignores_everyone_else(policy: Policy) -> None:
    new = _changed(taints=[], labels={"anything": "goes"})
    for user in (
        "system:node:kvm-1",
        "kubernetes-admin",
        f"system:serviceaccount:{NAMESPACE}:vmsandbox-operator",
    ):
        assert policy.admit(user, BASE, new, "kvm-1") == []
