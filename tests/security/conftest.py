"""The chart fixtures (real helm, cached renders), for tests that install or evaluate the chart's objects."""

from tests.chart.conftest import helm, render

__all__ = ["helm", "render"]
