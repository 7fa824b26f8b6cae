"""End-to-end fixtures: the node agent tests' image, registry and agent processes, plus a real operator."""

from tests.chart.conftest import helm
from tests.node_agent.conftest import *  # noqa: F403  (its fixtures, used by name)

__all__ = ["helm"]  # fixtures, used by name
