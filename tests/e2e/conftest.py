"""End-to-end fixtures: the node agent tests' image, registry and agent processes, plus a real operator."""

from tests.chart.conftest import helm
from tests.node_agent.conftest import (
    busybox_layout,
    cluster,
    guest_image_dir,
    make_agent,
    node_agent_tools,
    registry,
    session_dir,
    workdir,
)

__all__ = [
    "busybox_layout",
    "cluster",
    "guest_image_dir",
    "helm",
    "make_agent",
    "node_agent_tools",
    "registry",
    "session_dir",
    "workdir",
]
