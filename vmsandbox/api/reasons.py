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
