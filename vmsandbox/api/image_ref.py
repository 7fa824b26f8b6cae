"""Image reference syntax, shared by the model and the CRD so both accept exactly the same strings.

The expressions avoid look-arounds: Kubernetes evaluates CRD patterns with RE2.
"""

from __future__ import annotations

import re

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:localhost(?::[0-9]+)?|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::[0-9]+)?|[A-Za-z0-9-]+:[0-9]+)"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"

REGISTRY_REFERENCE = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?"
#: ``oci:<absolute path>[:tag]``: an OCI image layout already on the node.
LAYOUT_REFERENCE = rf"oci:/[^:@\s]*(?::{_TAG})?"
IMAGE_PATTERN = rf"^(?:{REGISTRY_REFERENCE}|{LAYOUT_REFERENCE})$"

_IMAGE_RE = re.compile(IMAGE_PATTERN)


def is_image_reference(value: str) -> bool:
    return bool(_IMAGE_RE.match(value))
