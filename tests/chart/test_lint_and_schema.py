"""``helm lint --strict`` and values.schema.json, through the real helm."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.helm import CHART, Helm, value_files


def test_lint_strict_with_defaults(helm: Helm) -> None:
    proc = helm.run("lint", "--strict", str(CHART), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", value_files(), ids=lambda p: p.stem)
def test_lint_strict_with_value_file(helm: Helm, values: Path) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "--values", str(values), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


#: (--set arguments, the field the error must name, a phrase of the reason)
BAD_VALUES = [
    (["operator.replicas=0"], "/operator/replicas", "minimum"),
    (["operator.replicass=3"], "/operator", "replicass"),
    (["image.pullPolicy=Sometimes"], "/image/pullPolicy", "IfNotPresent"),
    (["image.digest=sha256:abc"], "/image/digest", "pattern"),
    (["agent.hostPaths.state=var/lib/vmsandbox"], "/agent/hostPaths/state", "pattern"),
    (["agent.httpPort=70000"], "/agent/httpPort", "maximum"),
    (["agent.privileged=false"], "/agent/kvmDeviceResource", "minLength"),
    (["agent.capabilities={SYS_ADMIN}"], "/agent/capabilities/0", "must be one of"),
    (["agent.tolerations[0].operator=Maybe"], "/agent/tolerations/0/operator", "Exists"),
    (["webhook.enabled=true", "webhook.failurePolicy=Sometimes"], "/webhook/failurePolicy", "Ignore"),
    (["webhook.enabled=true", "webhook.tls.mode=secret"], "/webhook/tls/secretName", "minLength"),
    (["webhook.timeoutSeconds=60"], "/webhook/timeoutSeconds", "maximum"),
    (["metrics.serviceMonitor.interval=often"], "/metrics/serviceMonitor/interval", "pattern"),
    (["operator.resources.limits.memory=lots"], "/operator/resources/limits/memory", ""),
]


@pytest.mark.parametrize(("sets", "field", "reason"), BAD_VALUES, ids=[c[1] for c in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_field(
    helm: Helm, sets: list[str], field: str, reason: str
) -> None:
    proc = helm.run(*helm.template_args(sets=sets), check=False)
    assert proc.returncode != 0, f"{sets} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert f"at '{field}'" in proc.stderr, proc.stderr
    assert reason in proc.stderr, proc.stderr


def test_schema_accepts_every_documented_value_file(helm: Helm) -> None:
    for values in value_files():
        proc = helm.run(*helm.template_args([values]), check=False)
        assert proc.returncode == 0, f"{values.name}: {proc.stderr}"


def test_missing_service_account_name_is_refused(helm: Helm) -> None:
    proc = helm.run(*helm.template_args(sets=["agent.serviceAccount.create=false"]), check=False)
    assert proc.returncode != 0
    assert "agent.serviceAccount.name is required" in proc.stderr
