"""A running sandbox on the process backend (real runc, real guest agent) shared by a module."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.leaks import processes_mentioning
from tests.node_agent.conftest import *  # noqa: F403  (its fixtures, used by name)
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, unique
from tests.runtime.support import base_config, make_rootfs, short_root, write_bundle
from tests.tools import require_tools
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.client import AgentClient

#: Applets the exec tests use beyond the runtime tests' set.
MORE_APPLETS = ("head", "dd", "stty", "wc", "mkdir", "ln", "rm", "printf", "seq", "md5sum", "trap", "pwd")


@dataclass
class Sandbox:
    runtime: Runtime
    id: str
    rootfs: Path

    @property
    def agent(self) -> AgentClient:
        return self.runtime.agent_for(self.id)


def exec_rootfs(dest: Path) -> Path:
    make_rootfs(dest)
    for applet in MORE_APPLETS:
        with contextlib.suppress(FileExistsError):
            (dest / "bin" / applet).symlink_to("busybox")
    return dest


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A running container (``sleep 3600``) with a writable root of its own."""
    require_tools("runc", "unshare")
    root = short_root()
    runtime = Runtime(root=root, hypervisor="process")
    bundle_dir = tmp_path_factory.mktemp("exec") / "bundle"
    config = base_config(["sleep", "3600"])
    config["root"]["readonly"] = False
    config["process"]["env"].append("GREETING=hello")
    exec_rootfs(bundle_dir / "rootfs")
    write_bundle(bundle_dir, config, rootfs=bundle_dir / "rootfs")
    runtime.create("exec-box", bundle_dir)
    runtime.start("exec-box")
    try:
        yield Sandbox(runtime, "exec-box", bundle_dir / "rootfs")
        runtime.delete("exec-box", force=True)
        assert processes_mentioning(str(root)) == [], "processes left running"
    finally:
        for line in processes_mentioning(str(root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":")[0]), 9)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def running(make_agent: MakeAgent, cluster: Cluster, registry: Registry) -> tuple[AgentProcess, str]:
    agent = make_agent()
    name = unique("exec")
    cluster.create_sandbox(name, registry.sandbox(["sleep", "3600"]), node=agent.node)
    cluster.wait_phase(name, "Running", timeout=90)
    return agent, name
