"""Restart decisions, as Kubernetes makes them for a pod's containers, and how a failed launch
of each kind is retried."""

from __future__ import annotations

from dataclasses import dataclass

from vmsandbox.api.spec import RestartPolicy


def should_restart(policy: RestartPolicy, failed: bool) -> bool:
    """``Always`` restarts every exit, ``OnFailure`` non-zero exits and lost VMs, ``Never`` none."""
    return policy is RestartPolicy.ALWAYS or (policy is RestartPolicy.ON_FAILURE and failed)


def backoff_delay(consecutive: int, base: float, cap: float) -> float:
    """``base``, doubled for each consecutive restart, capped (10 s .. 5 min by default)."""
    if consecutive <= 1:
        return min(base, cap)
    return min(cap, base * 2 ** min(consecutive - 1, 32))


@dataclass(frozen=True)
class RetryPolicy:
    """How a launch that failed one way is retried, relative to the node's restart back-off.

    The rule, for every kind: the node's ``restartBackoffSeconds`` times ``first``, doubled for
    each failure in a row, capped at the node's ``restartBackoffMaxSeconds``. The node's two
    settings stay the scale and the bound of every kind, so an admin tunes all of them at once;
    a kind says only whether its first retry comes sooner (a hiccup that passes) or later (a
    host short of what only another sandbox's end frees).
    """

    #: The first retry's delay as a multiple of the node's base back-off.
    first: float = 1.0

    def __post_init__(self) -> None:
        if self.first <= 0:
            raise ValueError(f"RetryPolicy.first must be > 0, not {self.first}")

    def delay(self, consecutive: int, base: float, cap: float) -> float:
        """Seconds before the ``consecutive``-th retry in a row, on a node with ``base``/``cap``."""
        return backoff_delay(consecutive, base * self.first, cap)


#: The node's back-off as it is: the crash-loop rhythm, for a failure with no better guess.
NODE_BACKOFF = RetryPolicy()
#: A registry or network hiccup usually passes within seconds: the node's sequence two steps early.
TRANSIENT = RetryPolicy(first=0.25)
#: The host lacks memory, CPUs or addresses until another sandbox ends: one step late.
HOST_RESOURCES = RetryPolicy(first=2.0)
