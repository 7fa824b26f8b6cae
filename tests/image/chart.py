"""The chart values the image tests install with, and ``helm template`` of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.chart.helm import get_helm

RELEASE = "vmsandbox"


def run_values(ref: str, insecure_registry: str, host_dir: Path, ports: dict[str, int]) -> dict[str, Any]:
    """Values for one node on this machine: the image by digest, QEMU (TCG) only, loopback listeners."""
    repository, digest = ref.split("@")
    return {
        "image": {"repository": repository, "digest": digest, "pullPolicy": "IfNotPresent"},
        "operator": {
            "replicas": 1,
            "healthPort": ports["health"],
            "metricsPort": ports["metrics"],
            # Host network here: keep the operator's listeners on loopback.
            # As an admin who enabled QEMU on purpose (the default allows cloud-hypervisor only).
            "config": {"allowedHypervisors": ["qemu"]},
            "extraEnv": [
                {
                    "name": "VMSANDBOX_OPERATOR_LIVENESS_ENDPOINT",
                    "value": f"http://127.0.0.1:{ports['health']}/healthz",
                },
                {"name": "VMSANDBOX_OPERATOR_METRICS_HOST", "value": "127.0.0.1"},
            ],
        },
        "agent": {
            "httpPort": ports["agent"],
            "hostPaths": {"state": str(host_dir / "state"), "run": str(host_dir / "run")},
            "config": {
                "defaultHypervisor": "qemu",
                "allowedHypervisors": ["qemu"],
                "allowTCG": True,  # on purpose: this machine has no usable /dev/kvm
                "insecureRegistries": [insecure_registry],
                "listenAddress": "127.0.0.1",
                "reserveMemoryMiB": 0,
            },
            # /dev/kvm is unusable on this machine: QEMU emulates (TCG).
            "extraEnv": [{"name": "VMSANDBOX_QEMU_ACCEL", "value": "tcg"}],
        },
        # The API path needs the API server's aggregation layer, which a podman run has not;
        # tests/exec covers it against the local control plane.
        "subresources": {"enabled": False},
    }


def render(values: dict[str, Any], directory: Path, namespace: str) -> list[dict[str, Any]]:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return get_helm().render([path], namespace=namespace, release=RELEASE)
