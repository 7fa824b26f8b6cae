"""Restart decisions, as Kubernetes makes them for a pod's containers."""

from __future__ import annotations

from vmsandbox.api.spec import RestartPolicy


def should_restart(policy: RestartPolicy, failed: bool) -> bool:
    """``Always`` restarts every exit, ``OnFailure`` non-zero exits and lost VMs, ``Never`` none."""
    return policy is RestartPolicy.ALWAYS or (policy is RestartPolicy.ON_FAILURE and failed)


def backoff_delay(consecutive: int, base: float, cap: float) -> float:
    """``base``, doubled for each consecutive restart, capped (10 s .. 5 min by default)."""
    if consecutive <= 1:
        return min(base, cap)
    return min(cap, base * 2 ** min(consecutive - 1, 32))
