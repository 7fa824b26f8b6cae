"""An image reference taken apart: a registry image, or an OCI layout already on the node."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"


class ImageRef(BaseModel):
    """``registry`` is None for an ``oci:`` layout; ``layout`` is None for a registry image."""

    model_config = ConfigDict(frozen=True)

    original: str
    registry: str | None = None
    repository: str | None = None
    layout: Path | None = None
    tag: str = DEFAULT_TAG
    digest: str | None = None

    @property
    def is_layout(self) -> bool:
        return self.layout is not None

    @property
    def canonical(self) -> str:
        """One spelling per image, used as the cache key (``docker.io/library/busybox:latest``)."""
        if self.layout is not None:
            return f"oci:{self.layout}:{self.tag}"
        name = f"{self.registry}/{self.repository}"
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag}"

    @property
    def skopeo_source(self) -> str:
        if self.layout is not None:
            return f"oci:{self.layout}:{self.tag}"
        return f"docker://{self.canonical}"


def parse_image_ref(ref: str) -> ImageRef:
    """Split a reference the CRD already validated; defaults follow the Docker conventions."""
    if ref.startswith("oci:"):
        body = ref[len("oci:") :]
        path, sep, tag = body.rpartition(":")
        if not sep or "/" in tag:
            path, tag = body, DEFAULT_TAG
        return ImageRef(original=ref, layout=Path(path), tag=tag or DEFAULT_TAG)
    name, _, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, remainder = first, rest
    else:
        registry, remainder = DEFAULT_REGISTRY, name
    repository, colon, tag = remainder.rpartition(":")
    if not colon:
        repository, tag = remainder, DEFAULT_TAG
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    return ImageRef(original=ref, registry=registry, repository=repository, tag=tag, digest=digest or None)
