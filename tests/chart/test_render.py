"""What ``helm template`` renders, with default values and each value file in values/."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import NAMESPACE, VALUES_DIR, Helm, by_kind, one, value_files
from tests.chart.k8s_schema import ADDON_KINDS, VERSIONS, validate

Render = Callable[..., list[dict[str, Any]]]
CASES: list[tuple[Path, ...]] = [(), *[(p,) for p in value_files()]]


def _ids(case: tuple[Path, ...]) -> str:
    return case[0].stem if case else "defaults"


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_object_validates_against_kubernetes(
    render: Render, case: tuple[Path, ...], version: str
) -> None:
    objects = render(*case)
    assert objects
    for obj in objects:
        validate(obj, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_crd_validates_against_kubernetes(helm: Helm, version: str) -> None:
    crds = by_kind(helm.render(include_crds=True), "CustomResourceDefinition")
    names = [c["metadata"]["name"] for c in crds]
    assert sorted(names) == ["vmsandboxes.vmsandbox.io", "vmsandboxpools.vmsandbox.io"]
    for crd in crds:
        validate(crd, version)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_services_reach_named_container_ports(render: Render, case: tuple[Path, ...]) -> None:
    """Each Service selects pods of one workload and targets a port that workload names."""
    objects = render(*case)
    workloads = by_kind(objects, "Deployment") + by_kind(objects, "DaemonSet")
    for service in by_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        matched = [
            w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} workloads"
        names = {p["name"] for p in _container(matched[0]).get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"{service['metadata']['name']}: no container port {port}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_workload_selectors_match_their_pods(render: Render, case: tuple[Path, ...]) -> None:
    for workload in by_kind(render(*case), "Deployment") + by_kind(render(*case), "DaemonSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_operator_defaults(render: Render) -> None:
    objects = render()
    deployment = one(objects, "Deployment", "-operator")
    spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["namespace"] == NAMESPACE
    # kopf's liveness endpoint, contract port 8080.
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == get["port"])
        assert (port, get["path"]) == (8080, "/healthz")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8080, "metrics": 9090}
    pod_sc, sc = spec["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc or sc["privileged"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VMSANDBOX_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["VMSANDBOX_OPERATOR_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert not by_kind(objects, "ValidatingWebhookConfiguration")
    assert not by_kind(objects, "ServiceMonitor")


def test_single_replica_has_no_disruption_budget(render: Render) -> None:
    """A PDB with minAvailable 1 over one replica would block every node drain."""
    objects = render(VALUES_DIR / "single-replica.yaml")
    assert one(objects, "Deployment", "-operator")["spec"]["replicas"] == 1
    assert not by_kind(objects, "PodDisruptionBudget")


def test_agent_defaults(render: Render) -> None:
    daemonset = one(render(), "DaemonSet", "-agent")
    spec = daemonset["spec"]["template"]["spec"]
    container = _container(daemonset)
    assert spec["nodeSelector"] == {"vmsandbox.io/kvm": "true"}
    assert "tolerations" not in spec
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    get = container["readinessProbe"]["httpGet"]
    assert get["path"] == "/readyz"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8081}
    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(flag), flag
    # Guest memory lives in the agent's cgroup: no default memory limit that would OOM VMs.
    assert "limits" not in container["resources"]


def test_agent_placement_values(render: Render) -> None:
    import yaml

    wanted = yaml.safe_load((VALUES_DIR / "placement.yaml").read_text())["agent"]
    spec = one(render(VALUES_DIR / "placement.yaml"), "DaemonSet", "-agent")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {k: v for k, v in wanted["nodeSelector"].items() if v is not None}
    assert spec["tolerations"] == wanted["tolerations"]


def test_unprivileged_agent_with_kvm_device_plugin(render: Render) -> None:
    objects = render(VALUES_DIR / "device-plugin.yaml")
    daemonset = one(objects, "DaemonSet", "-agent")
    container = _container(daemonset)
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]
    assert daemonset["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    assert container["resources"]["limits"]["devices.kubevirt.io/kvm"] == 1
    # The device plugin provides /dev/kvm; no hostPath to the device then.
    paths = [
        v["hostPath"]["path"] for v in daemonset["spec"]["template"]["spec"]["volumes"] if "hostPath" in v
    ]
    assert "/dev/kvm" not in paths
    config = one(objects, "ConfigMap", "-agent-config")["data"]["agent.yaml"]
    import yaml

    assert yaml.safe_load(config)["allowedHypervisors"] == ["cloud-hypervisor"]


def test_service_monitors_select_the_metrics_services(render: Render) -> None:
    objects = render(VALUES_DIR / "servicemonitor.yaml")
    monitors = by_kind(objects, "ServiceMonitor")
    assert {m["metadata"]["name"].rsplit("-", 1)[1] for m in monitors} == {"operator", "agent"}
    assert {(m["apiVersion"], m["kind"]) for m in monitors} <= ADDON_KINDS
    services = by_kind(objects, "Service")
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        selected = [
            s
            for s in services
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
            assert endpoint["interval"] == "15s"


def _openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=30, check=False)


def test_generated_webhook_certificate_is_trusted_by_the_webhook_config(
    render: Render, tmp_path: Path
) -> None:
    """The API server must trust the operator's serving certificate for the Service's DNS name."""
    objects = render(VALUES_DIR / "webhook.yaml")
    config = one(objects, "ValidatingWebhookConfiguration")
    hook = config["webhooks"][0]
    assert hook["failurePolicy"] == "Fail"
    assert hook["rules"][0]["resources"] == ["vmsandboxes"]
    assert hook["rules"][0]["apiGroups"] == ["vmsandbox.io"]
    ref = hook["clientConfig"]["service"]
    service = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == ref["name"])
    assert service["metadata"]["namespace"] == ref["namespace"]
    port = next(p for p in service["spec"]["ports"] if p["port"] == ref["port"])
    deployment = one(objects, "Deployment", "-operator")
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[port["targetPort"]] == 9443
    from vmsandbox.operator.handlers import WEBHOOK_ID

    # kopf serves each admission handler at /<handler id>.
    assert ref["path"] == f"/{WEBHOOK_ID}"

    secret = one(objects, "Secret", "-webhook-tls")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": secret["metadata"]["name"]}} in volumes
    ca = tmp_path / "ca.pem"
    cert = tmp_path / "tls.pem"
    ca.write_bytes(base64.b64decode(hook["clientConfig"]["caBundle"]))
    cert.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    dns = f"{ref['name']}.{ref['namespace']}.svc"
    verified = _openssl("verify", "-CAfile", str(ca), "-verify_hostname", dns, str(cert))
    assert verified.returncode == 0, verified.stderr.decode() + verified.stdout.decode()
    wrong = _openssl("verify", "-CAfile", str(ca), "-verify_hostname", "other.example.com", str(cert))
    assert wrong.returncode != 0
    key = base64.b64decode(secret["data"]["tls.key"])
    cert_pub = _openssl("x509", "-noout", "-pubkey", "-in", str(cert)).stdout
    key_pub = _openssl("pkey", "-pubout", stdin=key).stdout
    assert cert_pub and cert_pub == key_pub


def test_webhook_with_provided_secret(render: Render) -> None:
    objects = render(VALUES_DIR / "webhook-secret.yaml")
    assert not by_kind(objects, "Secret"), "the admin's Secret must not be rendered over"
    hook = one(objects, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"]["caBundle"] == "TUlJQ2FkbWluLXByb3ZpZGVkLWNh"
    assert hook["failurePolicy"] == "Ignore"
    volumes = one(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": "my-webhook-tls"}} in volumes


def test_notes_tell_how_to_check_the_install(helm: Helm) -> None:
    from tests.chart.helm import CHART

    out = helm.run("install", "vmsandbox", str(CHART), "--dry-run=client", "-n", NAMESPACE).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "kubectl get vmsb -A" in notes
    assert "vmsandbox.io/agent" in notes
    assert "kubectl label node <node> vmsandbox.io/kvm=true" in notes


def test_schema_validation_catches_a_misplaced_field(render: Render) -> None:
    """The validation above can fail: a field one level too deep is an error, not ignored."""
    import copy

    deployment = copy.deepcopy(one(render(), "Deployment", "-operator"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readOnlyRootFilesystem"] = container["securityContext"].pop("readOnlyRootFilesystem")
    with pytest.raises(pytest.fail.Exception, match="readOnlyRootFilesystem"):
        validate(deployment, VERSIONS[-1])
