"""The timing contracts between the operator and the node agents, defined once for both.

Each agent renews its Lease (``vmsandbox-agent-<node>``) every :data:`AGENT_LEASE_RENEW_SECONDS`
and writes :data:`AGENT_LEASE_SECONDS` as its ``leaseDurationSeconds``; the operator counts the
node alive (schedulable) while the Lease was renewed within its ``agentAliveSeconds``, by default
the same :data:`AGENT_LEASE_SECONDS`. After :data:`NODE_LOST_GRACE_SECONDS` without a renewal the
operator fails the node's sandboxes with NodeLost and runs the restartable ones elsewhere, and an
agent cut off from the API server as long (less one renewal) stops them first (fencing): both
sides default to this one value, and the chart copies the operator's to the agents.
"""

from __future__ import annotations

from typing import Final

#: An agent Lease's duration, and the operator's liveness window for it.
AGENT_LEASE_SECONDS: Final = 40
#: How often an agent renews its Lease: several renewals fit in one window.
AGENT_LEASE_RENEW_SECONDS: Final = 10.0
#: Silence after which the operator declares a node lost and the agent has fenced its sandboxes.
NODE_LOST_GRACE_SECONDS: Final = 60.0
