"""The nearest-rank percentile the agent and control-plane benchmarks report."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The value ``q`` percent of the way through ``values`` sorted (0 to 100); NaN when there are
    none, so an empty series reads as missing rather than failing the whole report."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
