"""A sandbox naming a pool: take a ready member (warm) or start cold, and say which in WarmStart.

The decision is made once per launch, never waited for: no member ready, no such pool or a
shape that differs from the template all start the sandbox cold at once, with the reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vmsandbox.api.reasons import StatusReason
from vmsandbox.api.resource import VMSandbox
from vmsandbox.api.status import ConditionStatus, ConditionType, VMSandboxStatus
from vmsandbox.errors import VMSandboxError
from vmsandbox.node_agent.poolkeeper import Claim, PoolKeeper
from vmsandbox.runtime import ContainerState, Runtime
from vmsandbox.runtime.members import MEMBER_ANNOTATION

log = logging.getLogger("vmsandbox.node_agent.warmstart")


def decide(pools: PoolKeeper | None, sandbox: VMSandbox) -> Claim | None:
    """None when the sandbox names no pool; else the member to take, or why it starts cold."""
    pool = sandbox.spec.pool
    if pool is None:
        return None
    namespace = sandbox.metadata.namespace or ""
    if pools is None:
        return Claim(None, StatusReason.POOL_EMPTY, "this node's agent keeps no pools")
    return pools.claim(namespace, pool, sandbox)


def mark_bundle(bundle: Path, member_id: str | None) -> None:
    """Name the member the runtime's create takes (or none, for a cold retry) in config.json."""
    path = bundle / "config.json"
    config: dict[str, Any] = json.loads(path.read_text())
    annotations = config.setdefault("annotations", {})
    annotations.pop(MEMBER_ANNOTATION, None)
    if member_id is not None:
        annotations[MEMBER_ANNOTATION] = member_id
    path.write_text(json.dumps(config, indent=1))


def record_outcome(
    status: VMSandboxStatus, claim: Claim | None, claim_ms: float | None, generation: int | None
) -> None:
    """WarmStart and bootTimings.claim, written with the sandbox's VMReady."""
    if claim is None:
        return
    warm = claim.member_id is not None
    status.set_condition(
        ConditionType.WARM_START,
        ConditionStatus.TRUE if warm else ConditionStatus.FALSE,
        claim.reason,
        claim.message,
        generation,
    )
    if warm and status.boot_timings is not None:
        status.boot_timings.claim = claim_ms


def create(
    runtime: Runtime,
    pools: PoolKeeper | None,
    claim: Claim | None,
    container_id: str,
    bundle: Path,
    **options: Any,
) -> tuple[ContainerState, Claim | None]:
    """The runtime's create, in the claimed member's VM when there is one.

    A warm create that fails (the member's VM died, the hot-plug failed) is not the sandbox's
    failure: the member is given up and the sandbox starts cold at once, saying so.
    """
    if claim is None or claim.member_id is None:
        return runtime.create(container_id, bundle, **options), claim
    try:
        return runtime.create(container_id, bundle, **options), claim
    except VMSandboxError as exc:
        log.warning("claiming pool member %s failed (%s); starting cold", claim.member_id, exc)
        if pools is not None:
            pools.returned(claim.member_id)
        mark_bundle(bundle, None)
        cold = Claim(
            None,
            StatusReason.POOL_EMPTY,
            f"claimed member {claim.member_id} could not be used ({exc}); started cold",
        )
        return runtime.create(container_id, bundle, **options), cold
