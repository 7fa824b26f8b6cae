"""Relays of a VM backend (the Cloud Hypervisor stand-in) forked by the state root's fork server
where the settings ask for it, as the node agent does, and exec'd as a new interpreter where they
do not (a one-shot runtime call)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud_hypervisor.conftest import Workspace
from tests.cloud_hypervisor.test_ch_runtime_e2e import guest_images as guest_images  # the fixture
from tests.cloud_hypervisor.test_ch_runtime_snapshot import wait_exit
from tests.leaks import processes_mentioning
from tests.runtime.support import base_config, leftovers, write_bundle
from tests.tools import require_tools
from vmsandbox.hypervisor import forkserver
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.node_agent.runtimes import Runtimes
from vmsandbox.runtime import Runtime


def _runtime(workspace: Workspace, guest_images: Path, **settings: object) -> Runtime:
    require_tools("runc", "unshare", "mkfs.ext4", "debugfs")
    config = HypervisorConfig.load().model_copy(update={"guest_image_dir": guest_images, **settings})
    return Runtime(root=workspace.root / "rt", hypervisor="cloud-hypervisor", config=config)


@pytest.fixture
def stop_server(workspace: Workspace) -> Iterator[None]:
    yield
    forkserver.stop(workspace.root / "rt" / ".vms")


def _cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def _run(rt: Runtime, workspace: Workspace, name: str, code: int) -> list[bytes]:
    """Create, start and wait for a container exiting with ``code``; the relay's command line."""
    bundle = write_bundle(workspace.root / name, base_config(["sh", "-c", f"echo {name}; exit {code}"]))
    state = rt.create(name, bundle)
    relay = _cmdline(state.pid)
    rt.start(name)
    assert wait_exit(rt, name) == code
    assert Path(state.log_path or "").read_text() == f"{name}\n"
    rt.delete(name)
    return relay


def test_relays_are_forked_when_asked(workspace: Workspace, guest_images: Path, stop_server: None) -> None:
    rt = _runtime(workspace, guest_images, relay_forkserver=True)
    first = _run(rt, workspace, "forked1", 3)
    assert first[:2] == [b"vmsandbox.runtime.relay_main", b"(forked)"], first
    server = forkserver.server_identity(rt.root / ".vms")
    assert server, "the first relay started the server"
    assert _run(rt, workspace, "forked2", 4)[:2] == first[:2]
    assert forkserver.server_identity(rt.root / ".vms") == server, "one server for every relay"
    assert rt.list() == [] and leftovers(rt.root) == [] and processes_mentioning(str(rt.root)) == []


def test_a_one_shot_caller_execs_its_relay_and_starts_no_server(
    workspace: Workspace, guest_images: Path, stop_server: None
) -> None:
    rt = _runtime(workspace, guest_images)
    relay = _run(rt, workspace, "execd", 5)
    assert b"(forked)" not in relay and b"vmsandbox.runtime.relay_main" in relay, relay
    assert forkserver.server_identity(rt.root / ".vms") == ""


def test_the_node_agent_forks_relays_unless_told_not_to(tmp_path: Path) -> None:
    assert Runtimes(tmp_path, HypervisorConfig.load(environ={}), ["process"]).config.relay_forkserver
    off = HypervisorConfig.load(environ={"VMSANDBOX_RELAY_FORKSERVER": "false"})
    assert not Runtimes(tmp_path, off, ["process"]).config.relay_forkserver
