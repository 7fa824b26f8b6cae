"""Pool members: VMs booted ahead of any sandbox, with the guest agent ready and no container.

A member is a state record of kind ``member`` owning its VM. A sandbox's create takes one over
when its config.json carries :data:`MEMBER_ANNOTATION` (reserved ``io.vmsandbox.`` prefix: only
the node agent writes it): the new record takes the VM, the member's record goes, and the
container's disk is hot-plugged as for a pod container. Before the container is created the VM
gets its own identity: hostname, fresh entropy credited to the guest's pool, the host's clock,
and, when the sandbox has a network, its own NIC (the member booted without one).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import time

from vmsandbox.guest.protocol import ConfigureNetwork, CreateSandbox, Ok
from vmsandbox.hypervisor.base import HypervisorDriver, HypervisorError, VMHandle
from vmsandbox.hypervisor.network import NetworkAttachment
from vmsandbox.runtime.client import AgentClient
from vmsandbox.runtime.errors import RuntimeError_
from vmsandbox.runtime.faults import NIC_STEP, checkpoint
from vmsandbox.runtime.ids import validate_id
from vmsandbox.runtime.state import ContainerState, Record, StateStore
from vmsandbox.runtime.vmsize import VMSize

#: Names the member whose VM a sandbox's create takes instead of booting one.
MEMBER_ANNOTATION = "io.vmsandbox.pool-member"
#: Bytes of host randomness pushed into each claimed guest.
ENTROPY_BYTES = 64
#: Seconds the guest may take to see a hot-plugged NIC (an emulated guest on a busy host is slow).
NIC_WAIT = 60.0

log = logging.getLogger("vmsandbox.runtime")


class MemberUnavailable(RuntimeError_):
    """The named member does not exist, is not idle, or its VM has stopped."""

    step = "pool member"


def new_member_id() -> str:
    return "vmsbp-" + secrets.token_hex(8)


def member_record(member_id: str, hypervisor: str) -> Record:
    state = ContainerState(
        id=validate_id(member_id),
        status="creating",
        bundle="",
        hypervisor=hypervisor,
    )
    return Record(state=state, kind="member", sandbox_id=member_id, owns_vm=True)


def take_member(store: StateStore, driver: HypervisorDriver, member_id: str) -> Record:
    """The idle member ``member_id``, checked; the caller records its VM, then drops the member."""
    try:
        member = store.load(validate_id(member_id))
    except RuntimeError_ as exc:
        raise MemberUnavailable(f"pool member {member_id!r}: {exc.detail}") from None
    if member.kind != "member" or member.state.status != "created" or member.state.vm is None:
        raise MemberUnavailable(f"{member_id!r} is not an idle pool member")
    if member.state.hypervisor != driver.name:
        running = member.state.hypervisor
        raise MemberUnavailable(f"pool member {member_id!r} runs {running}, not {driver.name}")
    if not driver.alive(member.state.vm):
        raise MemberUnavailable(f"the VM of pool member {member_id!r} is not running")
    return member


def personalize(
    driver: HypervisorDriver,
    handle: VMHandle,
    sandbox_id: str,
    hostname: str | None,
    network: NetworkAttachment | None,
    *,
    reseed: bool = True,
) -> None:
    """Tell the guest agent whose sandbox it now serves, before any container of it exists.

    Hostname, resolvers and address always. A VM that did not just boot for this sandbox (a
    pool member, a snapshot's copy) also gets fresh entropy and the host's clock (``reseed``);
    the process backend shares the host's kernel, whose pool and clock are not the guest
    agent's to touch.
    """
    fresh = reseed and not driver.shares_host_fs
    request = CreateSandbox(
        sandbox_id=sandbox_id,
        hostname=hostname,
        # A sandbox the node gave no address has no resolver to reach either.
        dns=None if network is None else (list(network.dns) if network.ip else []),
        ip=network.ip if network is not None else None,
        entropy=base64.b64encode(os.urandom(ENTROPY_BYTES)).decode() if fresh else None,
        clock=time.time() if fresh else None,
    )
    AgentClient(driver, handle).call(request, Ok)


def plug_network(
    driver: HypervisorDriver,
    handle: VMHandle,
    network: NetworkAttachment | None,
    undo: contextlib.ExitStack,
) -> None:
    """Give a VM that did not boot for this sandbox (a pool member, a snapshot's copy) the
    sandbox's NIC: hot-plugged, then configured by the guest agent, before any container exists.

    Nothing to do without an address (mode ``none``, or no node network). A failed create
    unplugs the NIC again (``undo``), so its tap is free for the cold start that may follow.
    The process backend's network is the namespace its agent starts in: an agent started before
    its sandbox cannot join it, so such a claim is refused (and starts cold in its namespace).
    """
    if network is not None and network.netns is not None:
        raise MemberUnavailable(
            f"an agent started before its sandbox cannot join the sandbox's network namespace {network.netns}"
        )
    if network is None or network.ip is None or network.tap is None:
        return
    request = configure_request(network)  # refused before anything is plugged
    driver.attach_nic(handle, network)
    undo.callback(_unplug_quietly, driver, handle)
    checkpoint(NIC_STEP)
    AgentClient(driver, handle).call(request, Ok, timeout=NIC_WAIT + 30)


def configure_request(network: NetworkAttachment) -> ConfigureNetwork:
    """What the guest's init would have read from a cold boot's kernel command line."""
    return ConfigureNetwork(
        mac=network.mac,
        ip=network.ip,
        prefix_length=network.prefix_length,
        gateway=network.gateway,
        ip6=network.ip6 if network.gateway6 is not None else None,
        prefix_length6=network.prefix_length6,
        gateway6=network.gateway6 if network.ip6 is not None else None,
        dns=list(network.dns),
        timeout=NIC_WAIT,
    )


def _unplug_quietly(driver: HypervisorDriver, handle: VMHandle) -> None:
    """Rollback: a NIC that will not come out is logged; the VM is stopped next anyway."""
    try:
        driver.detach_nic(handle)
    except HypervisorError as exc:
        log.warning("unplugging the NIC of VM %s failed: %s", handle.vm_id, exc)


def size_of(record: Record) -> VMSize | None:
    """The size a member was booted with, from the annotations recorded at its boot."""
    raw = record.state.annotations
    with contextlib.suppress(KeyError, ValueError):
        return VMSize(vcpus=int(raw["vcpus"]), memory_mib=int(raw["memoryMiB"]))
    return None
