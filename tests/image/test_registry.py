"""The image through a registry and the chart: pushed to Debian's docker-registry on loopback, pulled
back by digest, and ``helm template`` with that reference renders valid manifests whose image,
commands and agent configuration are the ones the image runs (checked by running them in it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests
import yaml

from tests.chart.helm import one
from tests.chart.k8s_schema import VERSIONS, validate
from tests.image.chart import render, run_values
from tests.image.pod import PodIdentity, config_maps, container_run
from tests.image.podman import BuiltImage, inspect, podman
from tests.node_agent.support import Registry

pytestmark = pytest.mark.image

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def test_pulled_by_digest_is_the_built_image(
    image: BuiltImage, pushed_image: str, image_registry: Registry
) -> None:
    digest = pushed_image.split("@")[1]
    assert inspect(pushed_image)["Id"] == image.id
    resp = requests.get(
        f"http://{image_registry.host}/v2/vmsandbox/manifests/{digest}",
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == digest
    assert resp.headers["Docker-Content-Digest"] == digest
    layers = resp.json()["layers"]
    assert len(layers) == len(image.info["RootFS"]["Layers"])


def test_chart_with_the_pushed_reference_matches_the_image(
    image: BuiltImage, pushed_image: str, image_registry: Registry, tmp_path: Path
) -> None:
    namespace = "vmsandbox-system"
    ports = {"health": 18080, "metrics": 19090, "agent": 18081}
    objects = render(
        run_values(pushed_image, image_registry.host, tmp_path / "node", ports), tmp_path, namespace
    )
    for obj in objects:
        for version in VERSIONS:
            validate(obj, version)
    deployment, daemonset = one(objects, "Deployment"), one(objects, "DaemonSet")
    config = inspect(pushed_image)["Config"]
    for workload in (deployment, daemonset):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == pushed_image
        # Each command is a program of the image, on the image's PATH.
        which = f"command -v {container['command'][0]}"
        found = podman(
            "run", "--rm", "--network", "none", "--entrypoint", "sh", pushed_image, "-c", which, check=False
        )
        assert found.returncode == 0, found.stderr
        assert found.stdout.strip().startswith("/opt/vmsandbox/venv/bin/"), found.stdout
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"] == config["Cmd"]

    # The agent configuration the chart renders is valid for the agent in the image, in the
    # container the DaemonSet defines (its mounts, environment and user).
    run = container_run(
        daemonset,
        identity=PodIdentity(name="vmsandbox-agent-check", namespace=namespace, node="node-a"),
        workdir=tmp_path / "pod",
        config_maps=config_maps(objects),
        image_user=str(config.get("User") or ""),
    )
    argv = [*run.argv, "--check-config"]
    proc = podman("run", "--rm", *[f for f in run.flags if f != "--detach"], run.image, *argv, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checked = yaml.safe_load(proc.stdout)
    rendered = yaml.safe_load(config_maps(objects)["vmsandbox-agent-config"]["agent.yaml"])
    assert checked["defaultHypervisor"] == rendered["defaultHypervisor"] == "qemu"
    assert checked["allowedHypervisors"] == ["qemu"]
    assert checked["nodeName"] == "node-a" and checked["namespace"] == namespace
    assert checked["guestImageDir"] == "/opt/vmsandbox/guest"
    assert str(checked["port"]) == str(ports["agent"])
