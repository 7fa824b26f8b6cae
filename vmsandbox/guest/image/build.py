"""The build: resolve inputs, reuse a cached image or make one, and publish it to ``--out``."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import vmsandbox
from vmsandbox.guest.image import apt, initramfs, rootfs
from vmsandbox.guest.image.cache import DEFAULT_CACHE, BuildInputs, Cache, source_digest
from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.fsutil import remove_tree
from vmsandbox.guest.image.manifest import ARTIFACT_NAMES, MANIFEST_NAME, Artifact, Manifest, PackageVersion
from vmsandbox.guest.image.modules import GUEST_MODULES, read_plan
from vmsandbox.guest.image.sources import SOURCES_DIR, base_suite, machine_sources
from vmsandbox.guest.image.steps import run, step

log = logging.getLogger("vmsandbox.guest.image")

ROOT_LABEL = "vmsb-root"
MiB = 1024 * 1024


class BuildOptions(BaseModel):
    """What to build and where; every field that shapes the artifacts is part of the cache key."""

    model_config = ConfigDict(extra="forbid")

    out: Path
    cache_dir: Path = DEFAULT_CACHE
    kernel_package: str = "linux-image-cloud-amd64"
    modules: list[str] = Field(default_factory=lambda: list(GUEST_MODULES))
    rootfs_packages: list[str] = Field(default_factory=lambda: list(rootfs.ROOTFS_PACKAGES))
    variant: Literal["essential", "minbase"] = "essential"
    #: Wheels for the guest's interpreter; the agent itself needs none (it is standard library only).
    python_requirements: list[str] = Field(default_factory=list)
    sources_dir: Path = SOURCES_DIR
    #: Source tree of the vmsandbox package copied into the guest.
    package_root: Path = Path(vmsandbox.__file__).parent
    #: The root image size the build warns above.
    rootfs_budget_mib: int = 150
    #: Longest any one command (mmdebstrap, pip) may take before the step fails.
    step_timeout: float = Field(default=1800, gt=0)
    force: bool = False


class BuildResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    manifest: Manifest
    cached: bool
    seconds: float


def resolve_inputs(options: BuildOptions) -> BuildInputs:
    """Everything the key depends on, from the host's apt indexes and the package sources."""
    with step("apt-sources"):
        sources = machine_sources(options.sources_dir)
        suite = base_suite(sources)
    with step("resolve-packages"):
        kernel, busybox, tracked = _resolve_versions(options)
    with step("source-digest"):
        builder = source_digest(Path(__file__).parent, include=(".",), exclude_dirs=("__pycache__",))
        agent = source_digest(
            options.package_root,
            include=("__init__.py", "errors.py", "guest"),
            exclude_dirs=("image", "__pycache__"),
        )
    return BuildInputs(
        suite=suite,
        sources=[line for source in sources for line in source.one_line()],
        kernel=kernel,
        busybox=busybox,
        variant=options.variant,
        rootfs_packages=tracked,
        python_requirements=options.python_requirements,
        modules=options.modules,
        builder_sha256=builder,
        agent_sha256=agent,
        bytecode=rootfs.bytecode_tag(rootfs.python_version(tracked)),
    )


def _resolve_versions(options: BuildOptions) -> tuple[PackageVersion, PackageVersion, list[PackageVersion]]:
    """The kernel image, busybox and tracked root filesystem versions, in two apt queries.

    Tracked are the included packages and their direct dependencies: that catches the updates
    that matter (``python3.11``, ``libc6``) without resolving the whole closure; the manifest
    records the full installed list anyway. Virtual dependencies have no version and are skipped.
    """
    step_name = "resolve-packages"
    first = apt.require(step_name, [options.kernel_package, "busybox-static", *options.rootfs_packages])
    kernel_name = apt.kernel_image_name(first[options.kernel_package])
    included = {name: first[name] for name in options.rootfs_packages}
    deps = {name for fields in included.values() for name in apt.depends_names(fields)} - set(included)
    second = apt.candidates([kernel_name, *sorted(deps)])
    if kernel_name not in second:
        raise GuestImageError(f"apt has no installable version of {kernel_name}", step=step_name)
    tracked = {**included, **{name: fields for name, fields in second.items() if name in deps}}
    return (
        apt.version_of(second[kernel_name]),
        apt.version_of(first["busybox-static"]),
        [apt.version_of(tracked[name]) for name in sorted(tracked)],
    )


def build(options: BuildOptions) -> BuildResult:
    """Publish an image for ``options`` in ``options.out``, building it only if the cache lacks it."""
    started = time.monotonic()
    inputs = resolve_inputs(options)
    key = inputs.key()
    cache = Cache(options.cache_dir)
    with cache.locked():
        manifest = None if options.force else cache.lookup(key)
        cached = manifest is not None
        if manifest is None:
            log.info("building guest image %s", key)
            manifest = _build_entry(cache, inputs, key, options, started)
        else:
            log.info("guest image %s is cached", key)
        with step("publish"):
            publish(cache.entry(key), options.out.expanduser(), manifest)
    return BuildResult(
        out=options.out.expanduser(), manifest=manifest, cached=cached, seconds=time.monotonic() - started
    )


def _build_entry(
    cache: Cache, inputs: BuildInputs, key: str, options: BuildOptions, started: float
) -> Manifest:
    """Build into a scratch directory inside the cache; only a complete entry is renamed into place."""
    scratch = Path(tempfile.mkdtemp(prefix="tmp-", dir=cache.root))
    try:
        output = scratch / "out"
        output.mkdir()
        manifest = _build_artifacts(scratch, output, inputs, key, options, started)
        with step("cache"):
            cache.commit(output, key)
        return manifest
    finally:
        remove_tree(scratch)


def _build_artifacts(
    scratch: Path, output: Path, inputs: BuildInputs, key: str, options: BuildOptions, started: float
) -> Manifest:
    kernel_root = scratch / "kernel"
    with step("kernel-download"):
        kernel = apt.download_and_extract("kernel-download", inputs.kernel, scratch / "debs", kernel_root)
    with step("kernel-modules"):
        release, modules_dir = _kernel_release(kernel_root)
        if not (modules_dir / "modules.dep").exists():
            system_map = kernel_root / f"boot/System.map-{release}"
            run("kernel-modules", ["depmod", "-b", kernel_root, "-F", system_map, release])
        plan = read_plan(modules_dir, options.modules)
        shutil.copyfile(kernel_root / f"boot/vmlinuz-{release}", output / "vmlinuz")
    busybox_root = scratch / "busybox"
    with step("busybox-download"):
        busybox = apt.download_and_extract("busybox-download", inputs.busybox, scratch / "debs", busybox_root)
    with step("initramfs"):
        initramfs.write(output / "initramfs.img", busybox_root, modules_dir, release, plan)
    remove_tree(kernel_root)

    tree = scratch / "rootfs"
    with step("mmdebstrap"):
        sources = machine_sources(options.sources_dir)
        rootfs.bootstrap(
            tree, inputs.suite, sources, options.variant, tuple(options.rootfs_packages), options.step_timeout
        )
    with step("trim"):
        rootfs.trim(tree)
    with step("rootfs-packages"):
        packages = apt.installed_packages("rootfs-packages", tree)
    with step("python-wheels"):
        version = rootfs.python_version(packages)
        wheels = rootfs.install_wheels(tree, version, options.python_requirements, options.step_timeout)
    with step("guest-agent"):
        rootfs.install_agent(tree, options.package_root)
    with step("precompile"):
        rootfs.precompile(tree, version)
    with step("mkfs.ext4"):
        rootfs.make_ext4(tree, output / "rootfs.img", ROOT_LABEL, key)
    remove_tree(tree)

    with step("manifest"):
        manifest = Manifest(
            cache_key=key,
            built_at=datetime.now(UTC),
            build_seconds=round(time.monotonic() - started, 1),
            suite=inputs.suite,
            kernel=kernel,
            kernel_release=release,
            busybox=busybox,
            initramfs_modules=plan.names,
            builtin_modules=plan.builtin,
            rootfs_packages=packages,
            python_packages=wheels,
            artifacts={name: Artifact.of(output / name) for name in ARTIFACT_NAMES},
        )
        manifest.write(output)
    rootfs_mib = manifest.artifacts["rootfs.img"].size / MiB
    if rootfs_mib > options.rootfs_budget_mib:
        log.warning("rootfs.img is %.1f MiB, above the %d MiB budget", rootfs_mib, options.rootfs_budget_mib)
    return manifest


def _kernel_release(kernel_root: Path) -> tuple[str, Path]:
    releases = sorted((kernel_root / "lib/modules").glob("*"))
    if len(releases) != 1:
        raise GuestImageError(
            f"expected one kernel under {kernel_root}/lib/modules, found {len(releases)}",
            step="kernel-modules",
        )
    return releases[0].name, releases[0]


def publish(entry: Path, out: Path, manifest: Manifest) -> None:
    """Make ``out`` hold the entry's files, replacing an older image there but nothing else.

    Files are hard-linked from the cache when it shares the file system (copied otherwise) into
    a sibling staging directory, which then replaces ``out`` by rename.
    """
    if out.is_dir():
        try:
            current = Manifest.load(out)
        except GuestImageError:
            if any(out.iterdir()):
                raise GuestImageError(
                    f"{out} is not empty and holds no guest image ({MANIFEST_NAME}); not replacing it",
                    step="publish",
                ) from None
        else:
            if current.cache_key == manifest.cache_key:
                try:
                    current.verify(out)
                    return
                except GuestImageError:
                    pass
    elif out.exists():
        raise GuestImageError(f"{out} exists and is not a directory", step="publish")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name in (*ARTIFACT_NAMES, MANIFEST_NAME):
            try:
                os.link(entry / name, staging / name)
            except OSError:
                shutil.copy2(entry / name, staging / name)
        staging.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "image")
            os.rename(staging, out)
            remove_tree(old)
        else:
            os.rename(staging, out)
    finally:
        remove_tree(staging)
