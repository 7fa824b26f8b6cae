"""Admission: the checks beyond the CRD schema, shared by the reconciler and the validating webhook.

The schema already checks shapes; these rules need the models or the operator's configuration:
the image reference syntax, tolerations that make sense, label syntax in ``nodeSelector``,
annotation keys the runtimes reserve (the CRD refuses them too, where it has the rule) and
whether the requested hypervisor is allowed on this cluster. Every problem names its field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vmsandbox.api import InvalidSandbox, VMSandbox, parse_sandbox
from vmsandbox.api.constants import RESERVED_ANNOTATION_PREFIXES, reserved_annotation
from vmsandbox.api.image_ref import is_image_reference
from vmsandbox.api.spec import TaintEffect, TolerationOperator
from vmsandbox.operator.config import OperatorConfig

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key prefix {prefix!r} is not a DNS subdomain"
    if not _LABEL_NAME.match(name):
        return f"label key {key!r} is not a valid label name"
    return None


def _problems(sandbox: VMSandbox, config: OperatorConfig) -> list[tuple[str, str]]:
    spec = sandbox.spec
    problems: list[tuple[str, str]] = []
    if not is_image_reference(spec.image):
        problems.append(("spec.image", f"{spec.image!r} is not an image reference"))
    if spec.hypervisor is not None and spec.hypervisor not in config.allowed_hypervisors:
        allowed = ", ".join(h.value for h in config.allowed_hypervisors) or "none"
        problems.append(
            (
                "spec.hypervisor",
                f"{spec.hypervisor.value!r} is not allowed on this cluster (allowed: {allowed})",
            )
        )
    for key in spec.annotations or {}:
        if reserved_annotation(key):
            problems.append(
                (
                    f'spec.annotations["{key}"]',
                    "the prefix is reserved for the runtime (reserved: "
                    + ", ".join(RESERVED_ANNOTATION_PREFIXES)
                    + ")",
                )
            )
    for key, value in (spec.node_selector or {}).items():
        problem = _label_key_problem(key)
        if problem:
            problems.append((f"spec.nodeSelector.{key}", problem))
        elif not _LABEL_VALUE.match(value):
            problems.append((f"spec.nodeSelector.{key}", f"{value!r} is not a valid label value"))
    for i, toleration in enumerate(spec.tolerations or []):
        where = f"spec.tolerations[{i}]"
        if toleration.operator is TolerationOperator.EXISTS and toleration.value:
            problems.append((f"{where}.value", "must be empty when operator is Exists"))
        if toleration.key is None and toleration.operator is not TolerationOperator.EXISTS:
            problems.append((f"{where}.key", "an empty key needs operator Exists"))
        if toleration.key is not None:
            problem = _label_key_problem(toleration.key)
            if problem:
                problems.append((f"{where}.key", problem))
        if toleration.value and not _LABEL_VALUE.match(toleration.value):
            problems.append((f"{where}.value", f"{toleration.value!r} is not a valid taint value"))
        if toleration.toleration_seconds is not None and toleration.effect is not TaintEffect.NO_EXECUTE:
            problems.append((f"{where}.tolerationSeconds", "only applies with effect NoExecute"))
    return problems


def admit(obj: Mapping[str, Any], config: OperatorConfig) -> VMSandbox:
    """The parsed sandbox (status left out) if it may run here.

    Raises :class:`InvalidSandbox` naming each bad field.

    Status is written by the operator and the agents, so it never makes a sandbox invalid.
    """
    sandbox = parse_sandbox({k: v for k, v in obj.items() if k != "status"})
    problems = _problems(sandbox, config)
    if problems:
        raise InvalidSandbox(problems)
    return sandbox
