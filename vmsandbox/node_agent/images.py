"""The node's image cache: pulls with skopeo into OCI layouts, unpacks with umoci, keyed by digest.

Layout on disk under ``<stateDir>/images``:

- ``layouts/<key>/``: one OCI image layout per registry reference, written by ``skopeo copy``
  (one per reference so concurrent pulls of different images never share an ``index.json``);
- ``rootfs/<digest hex>/``: the unpacked root filesystem of a manifest digest plus its image
  config (``image.json``); sandboxes copy it, so one unpack serves every sandbox of the image;
- ``refs.json``: reference -> digest, sizes and last use, for ``IfNotPresent`` and eviction.

Pulls of the same reference are single-flight, and so are unpacks of the same digest (two
references to one image never unpack over each other). A cache over its size limit evicts the
least recently used images that no sandbox uses: those whose record names the digest, and
those handed out by :meth:`ImageStore.ensure` and not yet released (a sandbox between its pull
and the record that remembers it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vmsandbox.api.spec import PullPolicy
from vmsandbox.node_agent.errors import (
    ImageInvalid,
    ImageNotAllowed,
    ImageNotPresent,
    ImagePullFailed,
    InvalidImage,
)
from vmsandbox.node_agent.imageref import ImageRef, parse_image_ref

log = logging.getLogger("vmsandbox.node_agent.images")

PULL_TIMEOUT = 900.0
UNPACK_TIMEOUT = 300.0
_INDEX_MEDIA = "application/vnd.oci.image.index.v1+json"
_REF_NAME = "org.opencontainers.image.ref.name"
_SKOPEO_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
#: The only digests that may become a path: read from a layout, they are the image's word.
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ImageConfig(BaseModel):
    """The parts of an OCI image config that decide how its container runs."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    entrypoint: list[str] | None = Field(default=None, alias="Entrypoint")
    cmd: list[str] | None = Field(default=None, alias="Cmd")
    env: list[str] | None = Field(default=None, alias="Env")
    working_dir: str | None = Field(default=None, alias="WorkingDir")
    user: str | None = Field(default=None, alias="User")


class Image(BaseModel):
    """An image ready to be copied into a bundle."""

    reference: str
    digest: str
    rootfs: Path
    config: ImageConfig
    pulled_bytes: int = 0
    pull_seconds: float = 0.0


class CacheEntry(BaseModel):
    digest: str
    layout_key: str | None = None
    size_bytes: int = 0
    last_used: float = 0.0


def tool_error(stderr: str) -> str:
    """The human part of a Go tool's fatal log line (skopeo, umoci), else its last line."""
    found = _SKOPEO_MSG.findall(stderr)
    if found:
        return found[-1].replace('\\"', '"')
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidImage(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InvalidImage(f"cannot read {what} {path}: {exc}") from None


def checked_digest(digest: object, where: str) -> str:
    """``digest`` if it is ``sha256:<64 hex>``; anything else never reaches a path."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageInvalid(f"{where}: {str(digest)[:100]!r} is not a sha256 digest", step="image digest")
    return digest


def _blob(layout: Path, digest: object, where: str) -> Path:
    algo, _, hexpart = checked_digest(digest, where).partition(":")
    return layout / "blobs" / algo / hexpart


def _ref_name(descriptor: dict[str, Any]) -> str | None:
    return (descriptor.get("annotations") or {}).get(_REF_NAME)


def resolve_manifest(layout: Path, tag: str) -> tuple[str, dict[str, Any]]:
    """The manifest digest and manifest JSON tagged ``tag`` in an OCI layout (index -> amd64)."""
    index = _read_json(layout / "index.json", "image index")
    if not isinstance(index, dict):
        raise InvalidImage(f"{layout}/index.json is not a JSON object")
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    matches = [m for m in manifests if _ref_name(m) == tag]
    if not matches:
        tags = sorted({_ref_name(m) or "?" for m in manifests})
        raise ImagePullFailed(
            f"tag {tag!r} not found in OCI layout {layout} (tags: {', '.join(tags) or 'none'})"
        )
    descriptor = matches[0]
    if descriptor.get("mediaType") == _INDEX_MEDIA:
        nested = _read_json(_blob(layout, descriptor.get("digest"), "index.json"), "image index")
        platforms = [
            m
            for m in nested.get("manifests") or []
            if m.get("platform", {}).get("architecture") == "amd64"
            and m.get("platform", {}).get("os") == "linux"
        ]
        if not platforms:
            raise InvalidImage(f"{layout}:{tag} has no linux/amd64 manifest")
        descriptor = platforms[0]
    digest = checked_digest(descriptor.get("digest"), "manifest descriptor")
    return digest, _read_json(_blob(layout, digest, "manifest descriptor"), "image manifest")


def read_image_config(layout: Path, manifest: dict[str, Any]) -> ImageConfig:
    config_digest = manifest.get("config", {}).get("digest")
    if not config_digest:
        raise InvalidImage(f"manifest in {layout} has no config descriptor")
    document = _read_json(_blob(layout, config_digest, "manifest config descriptor"), "image config")
    return ImageConfig.model_validate(document.get("config") or {})


class ImageStore:
    """Thread-safe: the workers of many sandboxes ask for images at once."""

    def __init__(
        self,
        root: Path,
        *,
        limit_bytes: int,
        insecure: Callable[[str], bool],
        in_use: Callable[[], set[str]] = set,
        allowed_layout_dirs: Sequence[Path] = (),
    ) -> None:
        self.root = root
        self.allowed_layout_dirs = list(allowed_layout_dirs)
        self.limit_bytes = limit_bytes
        self._insecure = insecure
        self._in_use = in_use
        self._lock = threading.Lock()
        self._flights: dict[str, threading.Lock] = {}
        #: Digests handed out by ensure() and not yet released: never evicted.
        self._users: Counter[str] = Counter()
        (root / "layouts").mkdir(parents=True, exist_ok=True)
        (root / "rootfs").mkdir(parents=True, exist_ok=True)
        self._refs: dict[str, CacheEntry] = self._load_refs()

    # ---- public ------------------------------------------------------------------------

    def ensure(self, reference: str, policy: PullPolicy) -> Image:
        """The image for ``reference``, pulled and unpacked as ``policy`` says.

        The digest counts as in use until :meth:`release`: the caller releases it once its own
        record names the digest.
        """
        ref = parse_image_ref(reference)
        with self._flight(ref.canonical):
            image = self._ensure(ref, policy)
            with self._lock:
                self._users[image.digest] += 1
        self._evict(keep=image.digest)
        return image

    def release(self, digest: str) -> None:
        """The caller of :meth:`ensure` no longer needs the cache to hold ``digest`` for it."""
        with self._lock:
            self._users[digest] -= 1
            if self._users[digest] <= 0:
                del self._users[digest]

    def cached_digests(self) -> set[str]:
        with self._lock:
            return {entry.digest for entry in self._refs.values()}

    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._entry_sizes().values())

    # ---- pulling -----------------------------------------------------------------------

    def _ensure(self, ref: ImageRef, policy: PullPolicy) -> Image:
        if ref.is_layout:
            return self._from_node_layout(ref)
        cached = self._cached(ref)
        if cached is not None and policy is not PullPolicy.ALWAYS:
            return cached
        if policy is PullPolicy.NEVER:
            raise ImageNotPresent(
                f"image {ref.original!r} is not in the node's image cache and imagePullPolicy is Never"
            )
        key = hashlib.sha256(ref.canonical.encode()).hexdigest()[:24]
        layout = self.root / "layouts" / key
        before = dir_size(layout) if layout.exists() else 0
        t0 = time.monotonic()
        self._skopeo_copy(ref, layout)
        seconds = time.monotonic() - t0
        pulled = max(0, dir_size(layout) - before)
        digest, manifest = resolve_manifest(layout, "image")
        config = read_image_config(layout, manifest)
        rootfs = self._unpack(layout, "image", digest, config)
        self._remember(ref.canonical, CacheEntry(digest=digest, layout_key=key, last_used=time.time()))
        log.info("pulled %s (%s, %d bytes in %.2fs)", ref.original, digest, pulled, seconds)
        return Image(
            reference=ref.original,
            digest=digest,
            rootfs=rootfs,
            config=config,
            pulled_bytes=pulled,
            pull_seconds=seconds,
        )

    def _cached(self, ref: ImageRef) -> Image | None:
        with self._lock:
            entry = self._refs.get(ref.canonical)
        digest = ref.digest or (entry.digest if entry else None)
        if digest is None:
            return None
        unpacked = self._unpacked_dir(digest)
        if not (unpacked / "rootfs").is_dir() or not (unpacked / "image.json").is_file():
            return None
        config = ImageConfig.model_validate_json((unpacked / "image.json").read_text())
        if entry is not None:
            self._remember(ref.canonical, entry.model_copy(update={"last_used": time.time()}))
        return Image(reference=ref.original, digest=digest, rootfs=unpacked / "rootfs", config=config)

    def allowed_layout(self, layout: Path) -> Path:
        """The real path of ``layout`` if it lies in an allowed directory and not in the cache.

        One refusal for every other case (``..``, a symlink out, a missing path), so the answer
        says nothing about what exists on the node.
        """
        refusal = ImageNotAllowed(
            f"OCI layout {layout} is not in a directory this node allows images from "
            "(agent option allowedLayoutDirs)"
        )
        if not layout.is_absolute() or ".." in layout.parts:
            raise refusal
        real = Path(os.path.realpath(layout))
        if real.is_relative_to(os.path.realpath(self.root)):
            raise refusal
        for allowed in self.allowed_layout_dirs:
            if real.is_relative_to(os.path.realpath(allowed)):
                return real
        raise refusal

    def _from_node_layout(self, ref: ImageRef) -> Image:
        assert ref.layout is not None
        layout = self.allowed_layout(ref.layout)
        if not layout.is_dir():
            raise ImagePullFailed(f"OCI layout {layout} does not exist on this node")
        digest, manifest = resolve_manifest(layout, ref.tag)
        config = read_image_config(layout, manifest)
        rootfs = self._unpack(layout, ref.tag, digest, config)
        self._remember(ref.canonical, CacheEntry(digest=digest, last_used=time.time()))
        return Image(reference=ref.original, digest=digest, rootfs=rootfs, config=config)

    def _skopeo_copy(self, ref: ImageRef, layout: Path) -> None:
        assert ref.registry is not None
        cmd = ["skopeo", "copy", "--quiet"]
        if self._insecure(ref.registry):
            cmd.append("--src-tls-verify=false")
        cmd += [ref.skopeo_source, f"oci:{layout}:image"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PULL_TIMEOUT, check=False)
        except FileNotFoundError:
            raise ImagePullFailed("skopeo is not installed on this node") from None
        except subprocess.TimeoutExpired:
            raise ImagePullFailed(f"pulling {ref.original} took longer than {PULL_TIMEOUT:.0f}s") from None
        if proc.returncode != 0:
            raise ImagePullFailed(f"pulling {ref.original}: {tool_error(proc.stderr)}")

    # ---- unpacking ---------------------------------------------------------------------

    def _unpacked_dir(self, digest: str) -> Path:
        return self.root / "rootfs" / checked_digest(digest, "image digest").partition(":")[2]

    def _unpack(self, layout: Path, tag: str, digest: str, config: ImageConfig) -> Path:
        target = self._unpacked_dir(digest)
        with self._flight("digest:" + digest):  # one unpack per digest, whatever the reference
            if (target / "rootfs").is_dir() and (target / "image.json").is_file():
                return target / "rootfs"
            self._unpack_into(layout, tag, digest, config, target)
        return target / "rootfs"

    def _unpack_into(self, layout: Path, tag: str, digest: str, config: ImageConfig, target: Path) -> None:
        staging = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            cmd = ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(staging / "rootfs")]
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=UNPACK_TIMEOUT, check=False
                )
            except FileNotFoundError:
                raise InvalidImage("umoci is not installed on this node", step="image unpack") from None
            if proc.returncode != 0:
                raise InvalidImage(f"unpacking {digest}: {tool_error(proc.stderr)}", step="image unpack")
            (staging / "image.json").write_text(config.model_dump_json(by_alias=True))
            shutil.rmtree(target, ignore_errors=True)  # an incomplete one (a crash mid-unpack)
            staging.rename(target)
            log.info("unpacked %s", digest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ---- bookkeeping -------------------------------------------------------------------

    def _flight(self, key: str) -> threading.Lock:
        with self._lock:
            return self._flights.setdefault(key, threading.Lock())

    def _load_refs(self) -> dict[str, CacheEntry]:
        path = self.root / "refs.json"
        try:
            raw = json.loads(path.read_text())
            return {k: CacheEntry.model_validate(v) for k, v in raw.items()}
        except (OSError, ValueError):
            return {}

    def _remember(self, canonical: str, entry: CacheEntry) -> None:
        with self._lock:
            self._refs[canonical] = entry
            self._save_refs()

    def _save_refs(self) -> None:
        path = self.root / "refs.json"
        tmp = path.with_name(f".refs.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({k: v.model_dump() for k, v in self._refs.items()}))
        tmp.replace(path)

    def _entry_sizes(self) -> dict[str, int]:
        """Bytes per cached reference (layout + unpacked rootfs), computed once and remembered."""
        sizes: dict[str, int] = {}
        for canonical, entry in self._refs.items():
            if entry.size_bytes == 0:
                size = dir_size(self._unpacked_dir(entry.digest))
                if entry.layout_key:
                    size += dir_size(self.root / "layouts" / entry.layout_key)
                entry.size_bytes = size
            sizes[canonical] = entry.size_bytes
        return sizes

    def _evict(self, keep: str) -> None:
        """Drop least recently used images no bundle uses (nor ``keep``) until the cache fits."""
        with self._lock:
            sizes = self._entry_sizes()
            total = sum(sizes.values())
            if total <= self.limit_bytes:
                return
            busy = self._in_use() | {keep} | set(self._users)
            for canonical, entry in sorted(self._refs.items(), key=lambda kv: kv[1].last_used):
                if total <= self.limit_bytes:
                    break
                if entry.digest in busy:
                    continue
                shared = any(e.digest == entry.digest for k, e in self._refs.items() if k != canonical)
                if not shared:
                    shutil.rmtree(self._unpacked_dir(entry.digest), ignore_errors=True)
                if entry.layout_key:
                    shutil.rmtree(self.root / "layouts" / entry.layout_key, ignore_errors=True)
                del self._refs[canonical]
                total -= sizes[canonical]
                log.info("evicted %s (%s) from the image cache", canonical, entry.digest)
            self._save_refs()
