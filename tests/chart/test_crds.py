"""The chart installs exactly the CRDs generated into the top-level crds/ (Helm installs crds/ as is)."""

from __future__ import annotations

from tests.chart.helm import CHART, REPO


def test_chart_crds_equal_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in sorted((REPO / "crds").iterdir()) if p.is_file()}
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds").iterdir()) if p.is_file()}
    assert top, "crds/ is empty"
    assert sorted(chart) == sorted(top), "charts/vmsandbox/crds/ must hold the same files as crds/"
    stale = [name for name in top if chart[name] != top[name]]
    assert not stale, f"stale copies in the chart (cp crds/* charts/vmsandbox/crds/): {stale}"
