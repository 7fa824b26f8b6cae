"""ValidatingAdmissionPolicies, as the front evaluates them for custom resources (CEL via cel-python).

A policy applies when a binding names it with the ``Deny`` action, one of its
``matchConstraints.resourceRules`` matches the request (API group, ``resource`` or
``resource/subresource``, operation) and every ``matchCondition`` holds; then ``variables`` are
evaluated in order and each failed ``validation`` denies the request with its message and
reason, as kube-apiserver does. An expression that cannot be compiled or evaluated denies the
request when ``failurePolicy`` is ``Fail`` (the default). Not emulated: bindings'
``matchResources`` and ``paramRef``, namespace and object selectors, ``messageExpression``,
audit annotations, the API server's CEL type-checking and cost limits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vmsandbox.devcluster.admission")

OPERATIONS = {"POST": "CREATE", "PUT": "UPDATE", "PATCH": "UPDATE", "DELETE": "DELETE"}


class PolicyError(Exception):
    """An expression that does not compile or evaluate."""


@dataclass(frozen=True)
class Denial:
    policy: str
    binding: str
    message: str
    reason: str

    @property
    def code(self) -> int:
        return 422 if self.reason == "Invalid" else 403


def _program(env: Any, expression: str) -> Any:
    try:
        return env.program(env.compile(expression))
    except Exception as exc:  # celpy raises its own error types for parse and compile problems
        raise PolicyError(f"{expression!r}: {exc}") from exc


@dataclass
class CompiledPolicy:
    name: str
    binding: str
    rules: list[dict[str, Any]]
    fail_closed: bool
    match: list[tuple[str, Any]]
    variables: list[tuple[str, Any]]
    validations: list[tuple[Any, str, str]]
    broken: str = ""

    def applies(self, group: str, resource: str, subresource: str, operation: str) -> bool:
        wanted = f"{resource}/{subresource}" if subresource else resource
        for rule in self.rules:
            groups, names, operations = (rule.get(k) or [] for k in ("apiGroups", "resources", "operations"))
            if not ("*" in groups or group in groups):
                continue
            if not ("*" in operations or operation in operations):
                continue
            if any(_resource_matches(n, resource, subresource, wanted) for n in names):
                return True
        return False


def _resource_matches(rule: str, resource: str, subresource: str, wanted: str) -> bool:
    if rule in ("*", wanted):
        return True
    if subresource:
        return rule in (f"*/{subresource}", f"{resource}/*")
    return False


def compile_policies(objects: Iterable[Mapping[str, Any]]) -> list[CompiledPolicy]:
    """The bound, denying policies among ``objects`` (policies and bindings)."""
    import celpy

    objects = list(objects)
    policies = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ValidatingAdmissionPolicy"}
    compiled: list[CompiledPolicy] = []
    env = celpy.Environment()
    for binding in objects:
        if binding.get("kind") != "ValidatingAdmissionPolicyBinding":
            continue
        spec = binding.get("spec") or {}
        policy = policies.get(spec.get("policyName", ""))
        if policy is None or "Deny" not in (spec.get("validationActions") or []):
            continue
        pspec = policy.get("spec") or {}
        entry = CompiledPolicy(
            name=policy["metadata"]["name"],
            binding=binding["metadata"]["name"],
            rules=list((pspec.get("matchConstraints") or {}).get("resourceRules") or []),
            fail_closed=pspec.get("failurePolicy", "Fail") == "Fail",
            match=[],
            variables=[],
            validations=[],
        )
        try:
            entry.match = [
                (c["name"], _program(env, c["expression"])) for c in pspec.get("matchConditions") or []
            ]
            entry.variables = [
                (v["name"], _program(env, v["expression"])) for v in pspec.get("variables") or []
            ]
            entry.validations = [
                (
                    _program(env, v["expression"]),
                    v.get("message") or f"failed expression: {v['expression']}",
                    v.get("reason") or "Invalid",
                )
                for v in pspec.get("validations") or []
            ]
        except PolicyError as exc:
            entry.broken = str(exc)
            log.warning("policy %s does not compile: %s", entry.name, exc)
        compiled.append(entry)
    return compiled


def evaluate(
    policies: Iterable[CompiledPolicy], request: dict[str, Any], obj: Any, old: Any
) -> Denial | None:
    """The first denial among the policies that apply to ``request``, or None when admitted."""
    import celpy

    def cel_map(values: dict[str, Any]) -> Any:
        return celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in values.items()})

    sub = request.get("subResource", "")
    res = request["resource"]
    for policy in policies:
        if not policy.applies(res["group"], res["resource"], sub, request["operation"]):
            continue
        try:
            if policy.broken:
                raise PolicyError(policy.broken)
            activation: dict[str, Any] = {
                "request": celpy.json_to_cel(request),
                "object": celpy.json_to_cel(obj),
                "oldObject": celpy.json_to_cel(old),
            }
            if not all(_truth(program, activation) for _, program in policy.match):
                continue
            values: dict[str, Any] = {}
            for name, program in policy.variables:
                activation["variables"] = cel_map(values)
                values[name] = _value(program, activation)
            activation["variables"] = cel_map(values)
            for program, message, reason in policy.validations:
                if not _truth(program, activation):
                    return Denial(policy.name, policy.binding, message, reason)
        except PolicyError as exc:
            if policy.fail_closed:
                return Denial(policy.name, policy.binding, f"expression error: {exc}", "Forbidden")
    return None


def _value(program: Any, activation: dict[str, Any]) -> Any:
    try:
        return program.evaluate(activation)
    except Exception as exc:  # celpy's CELEvalError and the Python errors it wraps
        raise PolicyError(str(exc)) from exc


def _truth(program: Any, activation: dict[str, Any]) -> bool:
    import celpy

    value = _value(program, activation)
    if not isinstance(value, (bool, celpy.celtypes.BoolType)):
        raise PolicyError(f"the expression gave {type(value).__name__}, not a boolean")
    return bool(value)
