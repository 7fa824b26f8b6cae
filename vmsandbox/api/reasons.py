"""Status reasons shared by the operator and the node agent, so each is spelled in one place."""

from __future__ import annotations

#: The spec breaks an admission rule; the message names the field.
INVALID = "Invalid"
#: ``oci:`` layout outside the directories the node's admin allows.
IMAGE_NOT_ALLOWED = "ImageNotAllowed"
#: The unpacked image breaks a rule the agent checks before using it (a file that escapes the
#: root filesystem, is not a regular file or is too big; a user the image does not define).
IMAGE_INVALID = "ImageInvalid"
