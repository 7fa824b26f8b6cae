"""Container id rules: safe as a single path component, bounded, unique by atomic mkdir."""

from __future__ import annotations

import re

from vmsandbox.runtime.errors import InvalidId

ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
#: The id names a directory under the state root, so it is bounded by NAME_MAX.
MAX_ID_LENGTH = 255


def validate_id(container_id: str | None) -> str:
    if not container_id:
        raise InvalidId("missing container id")
    if len(container_id) > MAX_ID_LENGTH:
        raise InvalidId(f"id is {len(container_id)} characters long; at most {MAX_ID_LENGTH} are allowed")
    if not ID_PATTERN.match(container_id):
        raise InvalidId(f"invalid id {container_id!r}: must match {ID_PATTERN.pattern}")
    return container_id
