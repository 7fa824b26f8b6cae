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
from vmsandbox.runtime.snapshots import ANNOTATION_RESTORE_FROM
from vmsandbox.runtime.state import Timings

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


def mark_bundle(bundle: Path, claim: Claim | None) -> None:
    """Name in config.json the member the runtime's create takes, or the snapshot it restores
    (neither for a cold start): reserved annotations, which only the agent writes."""
    path = bundle / "config.json"
    config: dict[str, Any] = json.loads(path.read_text())
    annotations = config.setdefault("annotations", {})
    annotations.pop(MEMBER_ANNOTATION, None)
    annotations.pop(ANNOTATION_RESTORE_FROM, None)
    if claim is not None and claim.member_id is not None:
        annotations[MEMBER_ANNOTATION] = claim.member_id
    if claim is not None and claim.snapshot is not None:
        annotations[ANNOTATION_RESTORE_FROM] = claim.snapshot
    path.write_text(json.dumps(config, indent=1))


def record_outcome(
    status: VMSandboxStatus,
    claim: Claim | None,
    timings: Timings,
    generation: int | None,
    before_create_ms: float = 0.0,
) -> None:
    """WarmStart, and bootTimings.claim (and .restore), written with the sandbox's VMReady.

    ``claim`` counts from the agent taking up the sandbox (``before_create_ms`` until the
    runtime's create began) to the member handed over.
    """
    if claim is None:
        return
    status.set_condition(
        ConditionType.WARM_START,
        ConditionStatus.TRUE if claim.warm else ConditionStatus.FALSE,
        claim.reason,
        claim.message,
        generation,
    )
    if claim.warm and status.boot_timings is not None:
        handed = timings.claim if claim.member_id else timings.restore
        status.boot_timings.claim = round(before_create_ms + (handed or 0.0), 3)
        status.boot_timings.restore = timings.restore


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
    if claim is None or not claim.warm:
        return runtime.create(container_id, bundle, **options), claim
    try:
        return runtime.create(container_id, bundle, **options), claim
    except VMSandboxError as exc:
        what = claim.member_id or f"snapshot {claim.snapshot}"
        log.warning("claiming pool member %s failed (%s); starting cold", what, exc)
        if pools is not None and claim.member_id is not None:
            pools.returned(claim.member_id)
        mark_bundle(bundle, None)
        cold = Claim(
            None, StatusReason.POOL_EMPTY, f"pool member {what} could not be used ({exc}); started cold"
        )
        return runtime.create(container_id, bundle, **options), cold
