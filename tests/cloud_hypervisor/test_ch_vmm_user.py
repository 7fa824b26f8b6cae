"""Cloud Hypervisor runs as the VMM user: the stand-in started through the driver's own launch
path is that user's process, answers its API and creates the VM; a VMM user that does not exist
is refused naming the setting, with nothing started."""

from __future__ import annotations

import pytest

from tests.cloud_hypervisor.conftest import Workspace
from tests.qemu.test_driver import process_ids
from tests.vmm_user import ensure_vmm_user
from vmsandbox.hypervisor.base import DiskSpec, HypervisorError
from vmsandbox.hypervisor.cloud_hypervisor import vmm_process
from vmsandbox.hypervisor.cloud_hypervisor.driver import CloudHypervisorDriver, vmm_args
from vmsandbox.hypervisor.cloud_hypervisor.layout import VmLayout
from vmsandbox.hypervisor.config import HypervisorConfig


def test_the_vmm_runs_as_the_vmm_user_and_owns_only_its_state_dir(workspace: Workspace) -> None:
    user = ensure_vmm_user()
    driver = CloudHypervisorDriver(HypervisorConfig(vmm_user=user.name))
    disk = DiskSpec(path=workspace.disk("sandbox.img"), serial="ctr-sandbox", readonly=True)
    spec = workspace.spec(disks=[disk])
    layout = VmLayout.under(spec.state_dir)
    layout.state_dir.mkdir(parents=True)
    child = driver._launch(spec, layout, vmm_args(driver.config, spec))
    try:
        with driver._wait_ready(child, layout) as client:
            assert process_ids(child.pid) == (user.uid, user.gid), "the VMM runs as the VMM user"
            client.create(driver.vm_config(spec, layout))
            assert client.info().state == "Created"
        assert layout.state_dir.stat().st_uid == user.uid
        assert layout.api_socket.stat().st_uid == user.uid, "the VMM made its own API socket"
        for shared in (spec.kernel, spec.initramfs, spec.root_disk, disk.path):
            assert shared is not None and shared.stat().st_uid == 0, "shared files stay root's"
            assert not shared.stat().st_mode & 0o022, "nothing shared is writable by the VMM user"
    finally:
        vmm_process.kill(child.pid, child)
        driver._remove_files(layout, True)


@pytest.mark.parametrize("setting", ["no-such-vmm-user", "1000:abc"])
def test_a_vmm_user_that_does_not_exist_is_refused_naming_the_setting(
    workspace: Workspace, setting: str
) -> None:
    driver = CloudHypervisorDriver(HypervisorConfig(vmm_user=setting))
    with pytest.raises(HypervisorError) as info:
        driver.boot(workspace.spec())
    assert info.value.step == "vmm user"
    assert "vmmUser" in str(info.value) and "VMSANDBOX_VMM_USER" in str(info.value)
    assert not workspace.state_dir.exists()
