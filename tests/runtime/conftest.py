"""Fixtures: a state root per test with leak checks, busybox bundles, a shared pod sandbox."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.leaks import processes_mentioning
from tests.runtime.support import (
    Schemas,
    base_config,
    leftovers,
    load_schemas,
    make_rootfs,
    short_root,
    write_bundle,
)
from tests.tools import require_tools
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.runtime import Runtime

BundleFactory = Callable[..., Path]
_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _reaps_relays(subreaper: None) -> None:
    """Every runtime test reaps its relays as a runc-style caller (see ``subreaper``)."""


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return load_schemas()


@pytest.fixture(scope="session")
def shared_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rootfs(tmp_path_factory.mktemp("shared") / "rootfs")


def force_clean(rt: Runtime) -> None:
    """Delete every container (pod members first), as a caller cleaning up would."""
    for state in sorted(rt.list(), key=lambda s: s.id):
        record = rt.store.load(state.id)
        if record.kind == "container":
            rt.delete(state.id, force=True)
    for state in rt.list():
        rt.delete(state.id, force=True)


def assert_no_leaks(root: Path, keep: tuple[str, ...] = ()) -> None:
    assert leftovers(root, keep) == [], "files left under the state root"
    if not keep:
        assert processes_mentioning(str(root)) == [], "processes left running"


@pytest.fixture
def root() -> Iterator[Path]:
    """A short state root for runtime CLI tests; what they leave is deleted and leak-checked."""
    path = short_root()
    yield path
    try:
        rt = Runtime(root=path)
        for state in rt.list():
            rt.delete(state.id, force=True)
        assert_no_leaks(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def process_runtime(config: HypervisorConfig | None = None) -> Iterator[Runtime]:
    """A process-backend runtime on a fresh short root: what it leaves is deleted and
    leak-checked, and whatever still mentions the root is killed."""
    require_tools("runc", "unshare")
    root = short_root()
    runtime = Runtime(root=root, hypervisor="process", config=config)
    try:
        yield runtime
        force_clean(runtime)
        assert_no_leaks(root)
    finally:
        for line in processes_mentioning(str(root)):
            pid = int(line.split(":")[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with process_runtime() as runtime:
        yield runtime


@pytest.fixture
def make_bundle(tmp_path: Path, shared_rootfs: Path) -> BundleFactory:
    """``make_bundle(args, writable=False, edit=None, annotations=None) -> bundle path``."""

    def make(
        args: list[str],
        *,
        writable: bool = False,
        edit: Callable[[dict[str, Any]], None] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> Path:
        config = base_config(args)
        if annotations:
            config["annotations"] = annotations
        if writable:
            config["root"]["readonly"] = False
        else:
            config["root"]["path"] = str(shared_rootfs)
        if edit is not None:
            edit(config)
        path = tmp_path / f"bundle{next(_names)}"
        return write_bundle(path, config, rootfs=None if writable else shared_rootfs)

    return make


def cri_container(sandbox_id: str) -> dict[str, str]:
    return {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox_id}


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory, shared_rootfs: Path) -> Iterator[tuple[Runtime, str]]:
    """One running pod sandbox (a long ``sleep``) whose VM the module's pod containers join."""
    require_tools("runc", "unshare")
    root = short_root()
    runtime = Runtime(root=root, hypervisor="process")
    bundle = write_bundle(
        tmp_path_factory.mktemp("pod") / "sandbox",
        base_config(["sleep", "3600"]) | {"annotations": {"io.kubernetes.cri.container-type": "sandbox"}},
        rootfs=shared_rootfs,
    )
    runtime.create("pod-sandbox", bundle)
    runtime.start("pod-sandbox")
    try:
        yield runtime, "pod-sandbox"
        force_clean(runtime)
        assert_no_leaks(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
