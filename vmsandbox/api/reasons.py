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
    #: A pool's Ready condition: every desired member is ready, some are still starting, or the
    #: eligible nodes cannot hold all the replicas asked for.
    MEMBERS_READY = "MembersReady"
    MEMBERS_STARTING = "MembersStarting"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"


class PauseReason(StrEnum):
    """Reasons of the ``Paused`` condition and its events, set by the node agent."""

    #: spec.paused is true and the VM's vCPUs (or, process backend, processes) are stopped.
    PAUSED = "Paused"
    #: spec.paused went back to false and the VM runs again.
    RESUMED = "Resumed"
    #: The VM could not be paused or resumed; the message says why. Retried at the next poll.
    PAUSE_FAILED = "PauseFailed"
