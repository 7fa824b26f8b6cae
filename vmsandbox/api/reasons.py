"""``status.reason`` values: one CamelCase word for each way a sandbox waits or fails, named only here.

The operator and the agent pick a member of :class:`StatusReason`; tests and clients compare
against the same members, never against literals spread through the code.
"""

from __future__ import annotations

from enum import StrEnum


class StatusReason(StrEnum):
    #: The operator refuses the spec or a placement it did not decide; the message names the field.
    INVALID = "Invalid"
    SCHEDULED = "Scheduled"
    UNSCHEDULABLE = "Unschedulable"
    NODE_UNREACHABLE = "NodeUnreachable"
    NODE_LOST = "NodeLost"
    #: The agent stopped the VM because it could not renew its Lease for the node-loss grace
    #: (the operator runs the sandbox elsewhere); an Event reason.
    FENCED = "Fenced"
    #: The node's agent would overcommit its published capacity by starting this sandbox.
    OUT_OF_CAPACITY = "OutOfCapacity"
    #: The sandbox asks for a backend the node (or its namespace) does not allow.
    HYPERVISOR_NOT_ALLOWED = "HypervisorNotAllowed"
    #: An ``oci:`` layout outside the directories the node's admin allows (allowedLayoutDirs).
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    #: The image breaks a rule the agent checks before using it: a digest that is not one, a file
    #: it reads that is not a regular file inside the image or is too big, an undefined user.
    IMAGE_INVALID = "ImageInvalid"
    #: WarmStart True: the sandbox was served by a ready member of its pool.
    CLAIMED_FROM_POOL = "ClaimedFromPool"
    #: WarmStart False, started cold: the pool had no ready member on the sandbox's node.
    POOL_EMPTY = "PoolEmpty"
    #: WarmStart False, started cold: spec.pool names no pool in the sandbox's namespace.
    POOL_NOT_FOUND = "PoolNotFound"
    #: WarmStart False, started cold: resources, hypervisor or network mode differ from the template.
    POOL_SHAPE_MISMATCH = "PoolShapeMismatch"
    #: A pool's Ready condition: every desired member is ready, some are still starting, the
    #: eligible nodes cannot hold all the replicas asked for, or members are missing and the pool
    #: is paused (none is made until it is resumed).
    MEMBERS_READY = "MembersReady"
    MEMBERS_STARTING = "MembersStarting"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    PAUSED = "Paused"
    # ---- the node agent's failures to get a container running (node_agent/errors.py) ----
    #: A failure no more precise reason fits.
    FAILED = "Failed"
    #: The image could not be pulled (the registry's words in the message); retried.
    IMAGE_PULL_FAILED = "ImagePullFailed"
    #: imagePullPolicy Never and the image is not on the node; permanent.
    ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
    #: The image cannot run as asked (no command, an unknown user, a bad layout); permanent.
    INVALID_IMAGE = "InvalidImage"
    #: The spec breaks a rule the agent checks where it uses the value; permanent.
    INVALID_SPEC = "InvalidSpec"
    #: The VM (VMM, kernel, guest agent) could not be started; retried.
    VM_BOOT_FAILED = "VMBootFailed"
    #: The bundle or the container inside the VM could not be made; retried.
    CONTAINER_CREATE_FAILED = "ContainerCreateFailed"
    #: The node's sandbox network (address, link, policy) could not be set up; retried.
    NETWORK_SETUP_FAILED = "NetworkSetupFailed"
    #: The sandbox ran longer than activeDeadlineSeconds and was stopped, without restart.
    DEADLINE_EXCEEDED = "DeadlineExceeded"


class EventReason(StrEnum):
    """Reasons of Events that tell of a step, not of a status (those use :class:`StatusReason`)."""

    #: Operator: the node-loss brake holds evictions (too many nodes unreachable at once).
    EVICTIONS_PAUSED = "EvictionsPaused"
    #: Operator: no node can take the sandbox now; the message says why each was passed over.
    FAILED_SCHEDULING = "FailedScheduling"
    #: Operator: the node's agent renews its Lease again.
    NODE_RECOVERED = "NodeRecovered"
    #: Operator: the sandbox leaves a lost node to be placed again.
    RESCHEDULED = "Rescheduled"
    #: Operator: ttlSecondsAfterFinished has passed; the sandbox is deleted.
    EXPIRED = "Expired"
    #: Operator: a deletion on a lost node releases the agent's finalizer too.
    FORCE_RELEASED = "ForceReleased"
    #: Agent: a VM that outlived the agent's restart is running the sandbox again.
    ADOPTED = "Adopted"
    PULLING = "Pulling"
    PULLED = "Pulled"
    VM_BOOTED = "VMBooted"
    STARTED = "Started"
    #: Agent: the sandbox's VM is gone and its finalizer released, so the deletion completes.
    FINALIZER_REMOVED = "FinalizerRemoved"


class PauseReason(StrEnum):
    """Reasons of the ``Paused`` condition and its events, set by the node agent."""

    #: spec.paused is true and the VM's vCPUs (or, process backend, processes) are stopped.
    PAUSED = "Paused"
    #: spec.paused went back to false and the VM runs again.
    RESUMED = "Resumed"
    #: The VM could not be paused or resumed; the message says why. Retried at the next poll.
    PAUSE_FAILED = "PauseFailed"
