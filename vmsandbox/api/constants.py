"""Names that identify the VMSandbox API and the marks the operator and agents leave on objects."""

GROUP = "vmsandbox.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VMSandbox"
PLURAL = "vmsandboxes"
SINGULAR = "vmsandbox"
SHORT_NAMES = ("vmsb",)
CATEGORIES = ("all",)

#: Label the operator sets with the chosen node; agents select on it (works on every cluster).
NODE_LABEL = f"{GROUP}/node"
#: Finalizers: the operator's, and the node agent's (removed once the VM is torn down).
OPERATOR_FINALIZER = f"{GROUP}/operator"
AGENT_FINALIZER = f"{GROUP}/node-agent"

#: Node label an agent sets while it is alive and ready to take sandboxes.
AGENT_READY_LABEL = f"{GROUP}/agent"
#: Node annotation holding the agent's published capacity (JSON of NodeCapacity).
CAPACITY_ANNOTATION = f"{GROUP}/capacity"
#: Node annotation holding the URL of the agent's HTTP server (logs, metrics, health).
AGENT_ENDPOINT_ANNOTATION = f"{GROUP}/agent-endpoint"
#: Prefix of the per-node agent Lease (coordination.k8s.io) in the agent's namespace.
AGENT_LEASE_PREFIX = "vmsandbox-agent-"

#: Annotation key prefixes owned by the runtimes below the agent: a tenant's ``spec.annotations``
#: may not use them (they choose the pod role, the sandbox to join, runtime hooks...).
RESERVED_ANNOTATION_PREFIXES = (
    "io.kubernetes.",
    "io.vmsandbox.",
    "io.katacontainers.",
    "io.containerd.",
    "run.oci.",
    "org.systemd.",
    "nri.",
)


def reserved_annotation(key: str) -> bool:
    return key.startswith(RESERVED_ANNOTATION_PREFIXES)


#: Namespace label an administrator sets to allow the process backend (no VM) in that namespace.
PROCESS_BACKEND_LABEL = f"{GROUP}/process-backend"
PROCESS_BACKEND_ALLOWED = "allowed"

#: The VMSandboxPool kind: ready microVMs (or a snapshot) that sandboxes naming it claim.
POOL_KIND = "VMSandboxPool"
POOL_PLURAL = "vmsandboxpools"
POOL_SINGULAR = "vmsandboxpool"
POOL_SHORT_NAMES = ("vmsbp",)
#: Node annotation an agent writes with its pools' ready members (JSON, see api/pool.py).
POOLS_ANNOTATION = f"{GROUP}/pools"
#: Label the operator sets on a sandbox claiming a pool; the pool's status.selector selects on it.
POOL_LABEL = f"{GROUP}/pool"
