"""Sandboxes that break one rule each, with the field the error must name.

The same cases run through the pydantic model and through the real API server, which is how
the tests prove the two enforce the same rules.
"""

from __future__ import annotations

import copy
from typing import Any


def sandbox(name: str = "sb", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"image": "registry.local:5000/tools/busybox:1.36"}
    body.update(spec)
    return {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandbox",
        "metadata": {"name": name},
        "spec": body,
    }


def without_image() -> dict[str, Any]:
    obj = sandbox()
    del obj["spec"]["image"]
    return obj


def with_spec(**spec: Any) -> dict[str, Any]:
    return copy.deepcopy(sandbox(**spec))


#: (id, object, field path the error must name)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("image-missing", without_image(), "spec.image"),
    ("image-uppercase-repo", with_spec(image="Library/Busybox"), "spec.image"),
    ("image-bad-digest", with_spec(image="busybox@sha256:xyz"), "spec.image"),
    ("image-relative-layout", with_spec(image="oci:images/busybox"), "spec.image"),
    ("image-empty", with_spec(image=""), "spec.image"),
    ("pull-policy", with_spec(imagePullPolicy="Sometimes"), "spec.imagePullPolicy"),
    ("command-not-list", with_spec(command="echo hi"), "spec.command"),
    ("env-name", with_spec(env=[{"name": "1BAD", "value": "x"}]), "spec.env[0].name"),
    ("env-name-missing", with_spec(env=[{"value": "x"}]), "spec.env[0].name"),
    ("working-dir-relative", with_spec(workingDir="srv/app"), "spec.workingDir"),
    ("vcpus-zero", with_spec(resources={"vcpus": 0}), "spec.resources.vcpus"),
    ("vcpus-too-many", with_spec(resources={"vcpus": 65}), "spec.resources.vcpus"),
    ("memory-too-small", with_spec(resources={"memoryMiB": 64}), "spec.resources.memoryMiB"),
    ("memory-too-big", with_spec(resources={"memoryMiB": 262145}), "spec.resources.memoryMiB"),
    ("hypervisor", with_spec(hypervisor="xen"), "spec.hypervisor"),
    ("paused-not-a-bool", with_spec(paused="yes"), "spec.paused"),
    ("node-selector-value", with_spec(nodeSelector={"zone": 3}), "spec.nodeSelector.zone"),
    (
        "toleration-operator",
        with_spec(tolerations=[{"key": "gpu", "operator": "Maybe"}]),
        "spec.tolerations[0].operator",
    ),
    (
        "toleration-effect",
        with_spec(tolerations=[{"key": "gpu", "effect": "Never"}]),
        "spec.tolerations[0].effect",
    ),
    ("restart-policy", with_spec(restartPolicy="Sometimes"), "spec.restartPolicy"),
    ("deadline-negative", with_spec(activeDeadlineSeconds=-1), "spec.activeDeadlineSeconds"),
    ("ttl-negative", with_spec(ttlSecondsAfterFinished=-5), "spec.ttlSecondsAfterFinished"),
    ("annotation-value", with_spec(annotations={"io.kubernetes.cri.container-type": 1}), "spec.annotations"),
    ("network-mode", with_spec(network={"mode": "bridged"}), "spec.network.mode"),
    (
        "network-allow-not-cidr",
        with_spec(network={"egress": {"allow": ["example.com"]}}),
        "spec.network.egress.allow[0]",
    ),
    (
        "network-deny-too-many",
        with_spec(network={"egress": {"deny": [f"198.18.{i}.0/24" for i in range(65)]}}),
        "spec.network.egress.deny",
    ),
    ("pool-uppercase", with_spec(pool="Warm"), "spec.pool"),
    ("pool-too-long", with_spec(pool="p" * 64), "spec.pool"),
    ("pool-empty", with_spec(pool=""), "spec.pool"),
    ("pool-not-a-string", with_spec(pool=3), "spec.pool"),
]


def pool(name: str = "pool", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandboxPool",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec),
    }


#: (id, pool object, field path the error must name)
POOL_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("replicas-negative", pool(replicas=-1), "spec.replicas"),
    ("replicas-too-many", pool(replicas=65), "spec.replicas"),
    ("replicas-not-int", pool(replicas="two"), "spec.replicas"),
    ("mode", pool(mode="frozen"), "spec.mode"),
    ("vcpus-zero", pool(template={"resources": {"vcpus": 0}}), "spec.template.resources.vcpus"),
    (
        "memory-too-big",
        pool(template={"resources": {"memoryMiB": 262145}}),
        "spec.template.resources.memoryMiB",
    ),
    ("hypervisor", pool(template={"hypervisor": "xen"}), "spec.template.hypervisor"),
    ("node-selector-value", pool(template={"nodeSelector": {"zone": 3}}), "spec.template.nodeSelector.zone"),
    (
        "toleration-effect",
        pool(template={"tolerations": [{"key": "gpu", "effect": "Never"}]}),
        "spec.template.tolerations[0].effect",
    ),
    ("network-mode", pool(template={"network": {"mode": "bridged"}}), "spec.template.network.mode"),
]

VALID_IMAGES = [
    "busybox",
    "busybox:1.36",
    "library/busybox:latest",
    "docker.io/library/busybox:1.36",
    "localhost:5000/tools/busybox",
    "127.0.0.1:5000/busybox:v1",
    "registry.example.com/a/b/c:tag_1.0-rc",
    "quay.io/org/img@sha256:" + "a" * 64,
    "quay.io/org/img:tag@sha256:" + "0" * 64,
    "oci:/var/lib/images/busybox",
    "oci:/var/lib/images/busybox:1.36",
]
