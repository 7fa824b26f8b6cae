"""The chart's aggregated API: APIService, Service, serving certificate, the operator's settings,
and the RBAC of tenants (per subresource) and of the operator."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.chart.helm import NAMESPACE, RELEASE, by_kind, one
from tests.chart.rbac import Rule
from vmsandbox.api.constants import SUBRESOURCE_GROUP, SUBRESOURCE_ROUTES, SUBRESOURCE_VERSION

Render = Callable[..., list[dict[str, Any]]]


def _openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True, timeout=30, check=False)


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = one(objects, "Deployment", "-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def test_api_service_routes_to_the_operator_with_a_trusted_certificate(
    render: Render, tmp_path: Path
) -> None:
    objects = render()
    api_service = one(objects, "APIService")
    spec = api_service["spec"]
    assert api_service["metadata"]["name"] == f"{SUBRESOURCE_VERSION}.{SUBRESOURCE_GROUP}"
    assert (spec["group"], spec["version"]) == (SUBRESOURCE_GROUP, SUBRESOURCE_VERSION)
    assert not spec.get("insecureSkipTLSVerify")
    ref = spec["service"]
    service = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == ref["name"])
    assert service["metadata"]["namespace"] == ref["namespace"] == NAMESPACE
    port = next(p for p in service["spec"]["ports"] if p["port"] == ref["port"])
    container = _container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports[port["targetPort"]] == int(env["VMSANDBOX_OPERATOR_SUBRESOURCES_PORT"]) == 8443
    assert env["VMSANDBOX_OPERATOR_SUBRESOURCES"] == "true"

    secret = one(objects, "Secret", "-subresources-tls")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = one(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "subresources-tls", "secret": {"secretName": secret["metadata"]["name"]}} in volumes
    assert env["VMSANDBOX_OPERATOR_SUBRESOURCES_CERTFILE"] == f"{mounts['subresources-tls']}/tls.crt"
    ca, cert = tmp_path / "ca.pem", tmp_path / "tls.pem"
    ca.write_bytes(base64.b64decode(spec["caBundle"]))
    cert.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    dns = f"{ref['name']}.{ref['namespace']}.svc"
    verified = _openssl("verify", "-CAfile", str(ca), "-verify_hostname", dns, str(cert))
    assert verified.returncode == 0, verified.stderr.decode() + verified.stdout.decode()
    assert _openssl("verify", "-CAfile", str(ca), "-verify_hostname", "evil.example", str(cert)).returncode


def test_tenant_role_lists_each_subresource_in_both_groups(render: Render) -> None:
    role = one(render(), "ClusterRole", "-sandbox-exec")
    labels = role["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    rules = [Rule.parse(r) for r in role["rules"]]
    for group in (SUBRESOURCE_GROUP, "vmsandbox.io"):
        for sub in SUBRESOURCE_ROUTES:
            resource = f"vmsandboxes/{sub}"
            verbs = {"log": ("get",), "files": ("get", "create", "update")}.get(sub, ("get", "create"))
            for verb in verbs:
                assert any(r.allows(group, resource, verb, "box") for r in rules), (group, resource, verb)
            assert not any(r.allows(group, resource, "delete", "box") for r in rules)
        assert not any(r.allows(group, "vmsandboxes", "get", "box") for r in rules)


def test_operator_reads_only_the_requestheader_configmap(render: Render) -> None:
    objects = render()
    role = one(objects, "Role", "-requestheader-reader")
    assert role["metadata"]["namespace"] == "kube-system"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["extension-apiserver-authentication"],
            "verbs": ["get"],
        }
    ]
    binding = one(objects, "RoleBinding", "-requestheader-reader")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
    ]


def test_disabled_renders_no_aggregated_api(helm: Any, tmp_path: Path) -> None:
    values = tmp_path / "off.yaml"
    values.write_text("subresources:\n  enabled: false\n")
    objects = helm.render([values])
    assert not by_kind(objects, "APIService")
    assert not [o for o in objects if "subresources" in o["metadata"]["name"]]
    env = {e["name"]: e.get("value") for e in _container(objects)["env"]}
    assert env["VMSANDBOX_OPERATOR_SUBRESOURCES"] == "false"
