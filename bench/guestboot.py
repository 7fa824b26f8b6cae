"""Boot a guest image on the QEMU driver's exact command line and read its serial console.

No driver, no mux proxy, no runtime: the benchmarks that time the guest's own start use this,
so what they time is QEMU, the kernel, the initramfs's init and the guest agent alone. It
imports the ``vmsandbox`` on ``sys.path`` (``baseline.use_tree`` puts the tree under measurement
first), and copes with trees from before the QEMU firmware setting.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from vmsandbox.hypervisor.base import VMSpec
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.qemu.driver import READY_MARKER, VMPaths, qemu_argv
from vmsandbox.hypervisor.qemu.probe import choose_accel

READY_TIMEOUT = 300.0
#: How often the console file is read: a line's host time is when it was first seen.
POLL_SECONDS = 0.01


def driver_settings() -> HypervisorConfig:
    """The drivers' settings; the tree under measurement may predate ``HypervisorConfig.load``."""
    load = getattr(HypervisorConfig, "load", None) or getattr(HypervisorConfig, "from_env")  # noqa: B009
    config: HypervisorConfig = load()
    return config


def _firmware(config: HypervisorConfig) -> list[str]:
    try:
        from vmsandbox.hypervisor.qemu.firmware import firmware_for
    except ImportError:  # a tree from before the firmware setting boots QEMU's default one
        return []
    return [firmware_for(config.qemu_firmware)]


def console_until_ready(
    config: HypervisorConfig, image: Path, state: Path, initramfs: Path | None = None
) -> list[tuple[float, str]]:
    """Boot ``image`` (with another ``initramfs`` if given) until the agent's ready line.

    Returns the console's lines, each with the host seconds since QEMU's exec at which it was
    first read; the last one holds the ready marker. ``state`` is made and removed here.
    """
    state.mkdir()
    paths = VMPaths(state_dir=state)
    spec = VMSpec(
        vm_id=f"bench-{state.name}",
        state_dir=state,
        kernel=image / "vmlinuz",
        initramfs=initramfs or image / "initramfs.img",
        root_disk=image / "rootfs.img",
    )
    accel = choose_accel(config, image / "vmlinuz")
    argv = qemu_argv(config.qemu_binary, spec, accel, paths, *_firmware(config))
    quiet = subprocess.DEVNULL
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet)
    lines: list[tuple[float, str]] = []
    read = b""
    try:
        while True:
            now = time.monotonic() - started
            data = paths.console.read_bytes() if paths.console.exists() else b""
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) > len(read):
                fresh = complete[len(read) :].decode(errors="replace").splitlines()
                lines.extend((now, line) for line in fresh)
                read = complete
            if READY_MARKER in data:
                if READY_MARKER not in read:  # the ready line arrived without its newline yet
                    lines.append((now, READY_MARKER.decode()))
                return lines
            if proc.poll() is not None:
                tail = data.decode(errors="replace")[-800:]
                raise SystemExit(f"QEMU exited with {proc.returncode}: {tail}")
            if now > READY_TIMEOUT:
                raise SystemExit("QEMU: no ready line within the timeout")
            time.sleep(POLL_SECONDS)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(state, ignore_errors=True)
