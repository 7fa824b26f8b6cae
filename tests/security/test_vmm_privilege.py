"""Hypervisors a tenant cannot choose its way around, and VMMs with the least privilege they can have.

Cloud Hypervisor is the only backend allowed by default; QEMU under TCG needs ``allowTCG``;
the process backend (no VM) needs an admin's namespace label at the agent and an environment
opt-in at ``vmsandbox-runtime``. QEMU runs with its seccomp sandbox (this machine's QEMU must
accept the option: a real QEMU is started here); Cloud Hypervisor with ``--seccomp true`` and
``--landlock`` where the kernel has Landlock (the real binary cannot run here, see README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.helm import REPO
from tests.node_agent.conftest import allow_process_backend
from tests.security.agent import running_agent
from tests.tools import require_tools
from vmsandbox.api.reasons import StatusReason
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.hypervisor.base import HypervisorError, VMSpec
from vmsandbox.hypervisor.cloud_hypervisor.driver import vmm_args
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.landlock import landlock_abi
from vmsandbox.hypervisor.qemu.driver import SECCOMP_SANDBOX, VMPaths, qemu_argv
from vmsandbox.node_agent.capacity import hypervisor_refusals
from vmsandbox.node_agent.config import AgentConfig
from vmsandbox.runtime.cli import _parser

SANDBOX_OPTIONS = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def _runtime(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "VMSANDBOX_ALLOW_PROCESS_BACKEND"}
    environ.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, "-m", "vmsandbox.runtime", "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


# -- what is allowed by default -----------------------------------------------------------------


def test_agent_allows_only_cloud_hypervisor_by_default() -> None:
    config = AgentConfig.model_validate({"nodeName": "n1"})
    assert config.allowed_hypervisors == ["cloud-hypervisor"]
    assert config.allow_tcg is False


def test_qemu_under_tcg_is_refused_without_allow_tcg(tmp_path: Path) -> None:
    qemu = shutil.which("qemu-system-x86_64") or "/bin/true"
    hv = HypervisorConfig(qemu_binary=qemu, qemu_accel="tcg", guest_image_dir=tmp_path)
    config = AgentConfig.model_validate(
        {"nodeName": "n1", "allowedHypervisors": ["cloud-hypervisor", "qemu"]}
    )
    refusal = hypervisor_refusals(config, hv)["qemu"]
    assert refusal == (
        "qemu would run under TCG emulation (VMSANDBOX_QEMU_ACCEL=tcg), which is not a security "
        "boundary; the agent allows that only with allowTCG: true"
    )
    allowed = config.model_copy(update={"allow_tcg": True})
    assert "qemu" not in hypervisor_refusals(allowed, hv)
    # Under KVM there is nothing to allow.
    assert "qemu" not in hypervisor_refusals(config, hv.model_copy(update={"qemu_accel": "kvm"}))


def test_runtime_defaults_to_cloud_hypervisor_and_process_needs_an_opt_in(tmp_path: Path) -> None:
    assert _parser().parse_args(["list"]).hypervisor == "cloud-hypervisor"
    bundle = tmp_path / "no-bundle"
    refused = _runtime(tmp_path / "root", "--hypervisor", "process", "create", "--bundle", str(bundle), "c1")
    assert refused.returncode == 1
    assert "set VMSANDBOX_ALLOW_PROCESS_BACKEND=1 as well" in refused.stderr
    assert not (tmp_path / "root" / "c1").exists()
    # With the opt-in it goes on to the next step (here: the missing bundle).
    allowed = _runtime(
        tmp_path / "root",
        "--hypervisor",
        "process",
        "create",
        "--bundle",
        str(bundle),
        "c1",
        VMSANDBOX_ALLOW_PROCESS_BACKEND="1",
    )
    assert allowed.returncode == 1 and "VMSANDBOX_ALLOW_PROCESS_BACKEND" not in allowed.stderr
    assert "bundle" in allowed.stderr


@pytest.mark.kube
def test_process_backend_needs_the_namespace_label(kube: LocalCluster, kube_namespace: str) -> None:
    """The agent allows process, but this namespace's admin did not: refused before anything runs."""
    with running_agent(kube, kube_namespace) as (cluster, node, workdir):
        spec = {"image": "127.0.0.1:9/absent/image:1", "imagePullPolicy": "Never", "hypervisor": "process"}
        cluster.create_sandbox("no-vm", spec, node=node)
        status = cluster.wait_phase("no-vm", "Failed", timeout=60)
        assert status["reason"] == StatusReason.HYPERVISOR_NOT_ALLOWED, status
        assert f"namespace {kube_namespace} does not allow it" in status["message"]
        assert "vmsandbox.io/process-backend=allowed" in status["message"]
        assert not any((workdir / "run").glob("*/state.json"))
        # Once the admin labels the namespace, the same agent gets as far as the image.
        allow_process_backend(kube, kube_namespace)
        cluster.create_sandbox("labelled", spec, node=node)
        status = cluster.wait_phase("labelled", "Failed", timeout=60)
        assert status["reason"] != StatusReason.HYPERVISOR_NOT_ALLOWED, status


# -- the VMMs -----------------------------------------------------------------------------------


def _spec(tmp_path: Path) -> VMSpec:
    for name in ("vmlinuz", "initramfs.img", "rootfs.img"):
        (tmp_path / name).write_bytes(b"")
    return VMSpec(
        vm_id="vm1",
        state_dir=tmp_path / "vm1",
        kernel=tmp_path / "vmlinuz",
        initramfs=tmp_path / "initramfs.img",
        root_disk=tmp_path / "rootfs.img",
        hotplug_dirs=[tmp_path],
    )


def test_qemu_runs_with_its_seccomp_sandbox(tmp_path: Path) -> None:
    argv = qemu_argv("qemu-system-x86_64", _spec(tmp_path), "tcg", VMPaths(state_dir=tmp_path / "vm1"))
    assert argv[argv.index("-sandbox") + 1] == SANDBOX_OPTIONS == SECCOMP_SANDBOX


def test_this_machines_qemu_accepts_the_sandbox_options(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64")
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    qmp = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [
            qemu,
            "-sandbox",
            SECCOMP_SANDBOX,
            "-machine",
            "none",
            "-display",
            "none",
            "-nodefaults",
            "-qmp",
            "stdio",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(
        json.dumps({"execute": "qmp_capabilities"}) + "\n" + json.dumps({"execute": "quit"}) + "\n",
        timeout=60,
    )
    assert proc.returncode == 0, err
    assert '"QMP"' in out and "seccomp" not in err.lower(), (out, err)
    assert not qmp.exists()


def test_cloud_hypervisor_runs_with_seccomp_and_landlock(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    args = vmm_args(HypervisorConfig(cloud_hypervisor_args=["-v"]), spec)
    assert args[:3] == ["-v", "--seccomp", "true"]
    if landlock_abi() > 0:
        assert args[3:] == ["--landlock", "--landlock-rules", f"path={tmp_path},access=rw"]
    else:
        assert "--landlock" not in args
    with pytest.raises(HypervisorError, match="--seccomp is set by the driver"):
        vmm_args(HypervisorConfig(cloud_hypervisor_args=["--seccomp", "false"]), spec)
