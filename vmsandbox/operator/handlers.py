"""The kopf side: a fresh registry per operator with watch handlers, the webhook and probes.

Sandboxes, pools, Nodes and agent Leases are watched with low-level ``on.event`` handlers that only
feed the cache and the work queue: the reconciler decides and writes. So kopf keeps no
progress or diff-base annotations on sandboxes and adds no finalizer of its own; the
operator's finalizer ``vmsandbox.io/operator`` is added with the placement and removed by the
reconciler once the node agent has let go. Handlers return None, so nothing lands in status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import kopf

from vmsandbox.api import InvalidSandbox
from vmsandbox.api.constants import GROUP, PLURAL, POOL_PLURAL, VERSION
from vmsandbox.operator.admission import admit

if TYPE_CHECKING:
    from vmsandbox.operator.runner import Operator

#: The webhook's handler id, which is also its URL path (``/validate-vmsandbox``).
WEBHOOK_ID = "validate-vmsandbox"


def build_registry(op: Operator) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    reconciler = op.reconciler

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        conn = op.connection
        return kopf.ConnectionInfo(
            server=conn.server,
            # kopf logs in again after a 401, and so picks up a rotated service-account token.
            token=conn.bearer_token(),
            ca_path=conn.ca_file,
            insecure=conn.insecure,
            certificate_path=conn.cert_file,
            private_key_path=conn.key_file,
        )

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def sandbox_event(event: kopf.RawEvent, **_: Any) -> None:
        op.delivered("sandbox", event.get("type"), cast(dict[str, Any], event["object"]))

    @kopf.on.event("v1", "nodes", registry=registry)
    async def node_event(event: kopf.RawEvent, **_: Any) -> None:
        op.delivered("node", event.get("type"), cast(dict[str, Any], event["object"]))

    @kopf.on.event(GROUP, VERSION, POOL_PLURAL, registry=registry)
    async def pool_event(event: kopf.RawEvent, **_: Any) -> None:
        op.delivered("pool", event.get("type"), cast(dict[str, Any], event["object"]))

    @kopf.on.event("coordination.k8s.io", "v1", "leases", registry=registry)
    async def lease_event(event: kopf.RawEvent, **_: Any) -> None:
        op.delivered("lease", event.get("type"), cast(dict[str, Any], event["object"]))

    @kopf.on.probe(id="leader", registry=registry)
    def leader_probe(**_: Any) -> bool:
        return op.leading()

    @kopf.on.probe(id="queue", registry=registry)
    def queue_probe(**_: Any) -> int:
        return len(reconciler.queue)

    if op.config.webhook:

        @kopf.on.validate(GROUP, VERSION, PLURAL, id=WEBHOOK_ID, registry=registry)
        def validate(body: kopf.Body, operation: str | None = None, **_: Any) -> None:
            if operation in ("CREATE", "UPDATE"):
                _validate(op, body)

    return registry


def _validate(op: Operator, body: kopf.Body) -> None:
    try:
        admit(dict(body), op.config)
    except InvalidSandbox as exc:
        raise kopf.AdmissionError(str(exc), code=422) from None
