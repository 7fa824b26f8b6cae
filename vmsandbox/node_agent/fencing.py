"""Fencing: an agent cut off from the API server stops the sandboxes the operator will run elsewhere.

The operator declares a node lost once it has not seen the node's Lease change for
``nodeLostGraceSeconds`` and then reschedules its sandboxes with restartPolicy OnFailure or
Always. Were the cut-off agent to keep those VMs, the same sandbox would run twice. The agent
measures its own silence from the moment it *sent* its last successful renewal, which the
operator can only have seen at that moment or later, and acts one renewal period (at most a
quarter of the grace) before the grace ends: its VMs of such sandboxes are stopped before the
operator can reschedule them. Sandboxes with restartPolicy Never are never rescheduled, so
they keep running and are reported when the API server answers again.
"""

from __future__ import annotations

from collections.abc import Callable

from vmsandbox.api.spec import RestartPolicy

#: Policies under which the operator reschedules a sandbox of a lost node.
RESCHEDULED = (RestartPolicy.ON_FAILURE, RestartPolicy.ALWAYS)


class Fence:
    def __init__(self, silence: Callable[[], float], grace: float, renew: float) -> None:
        """``grace``: the operator's nodeLostGraceSeconds (0 turns fencing off)."""
        self._silence = silence
        self.grace = grace
        self.after = max(grace - min(renew, grace / 4), 0.0)

    def due(self) -> bool:
        """Whether the agent has been cut off long enough that it must stop rescheduled sandboxes."""
        return self.grace > 0 and self._silence() > self.after

    def applies_to(self, policy: RestartPolicy) -> bool:
        return policy in RESCHEDULED

    def describe(self) -> str:
        return (
            f"the agent could not renew its Lease for {self._silence():.0f}s; the operator declares "
            f"the node lost after {self.grace:.0f}s and runs the sandbox elsewhere"
        )
