"""The KVM boot probe: its marker initramfs really reaches init, and "auto" decides once."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.qemu import probe
from vmsandbox.hypervisor.qemu.probe import KvmVerdict, boot_probe, choose_accel


@pytest.mark.vm
def test_probe_initramfs_reaches_init_under_tcg(guest_image: Path, qemu_binary: str) -> None:
    """Without this, a working KVM host would be judged unusable."""
    reached, why = boot_probe(qemu_binary, guest_image / "vmlinuz", deadline=90, accel="tcg")
    assert reached, why


@pytest.mark.vm
def test_auto_probes_once_caches_the_verdict_and_logs_the_fallback_once(
    guest_image: Path,
    qemu_binary: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(probe, "_fallback_logged", False)
    config = HypervisorConfig(qemu_binary=qemu_binary, qemu_accel="auto")
    kernel = guest_image / "vmlinuz"
    with caplog.at_level(logging.WARNING, logger="vmsandbox.hypervisor.qemu"):
        first = choose_accel(config, kernel, cache=tmp_path)
        started = time.monotonic()
        second = choose_accel(config, kernel, cache=tmp_path)
        cached_seconds = time.monotonic() - started
    assert first == second
    fallbacks = [r.getMessage() for r in caplog.records if "KVM unusable" in r.getMessage()]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert first == "tcg"
        assert len(fallbacks) == 1
        return
    [cached] = (tmp_path / "kvm-probe").glob("*.json")
    verdict = KvmVerdict.model_validate_json(cached.read_text())
    # A probe boots for seconds (or hits its deadline); the second answer comes from the file.
    assert cached_seconds < 1.0
    assert verdict.probe_seconds <= probe.PROBE_DEADLINE + 5
    if verdict.usable:
        assert first == "kvm" and fallbacks == []
    else:
        # The case on hosts whose /dev/kvm hangs stock kernels (nested PVM).
        assert first == "tcg"
        assert fallbacks == [f"qemu: KVM unusable ({verdict.reason}), using TCG"]


@pytest.mark.vm
def test_a_kernel_that_cannot_boot_is_judged_unusable(qemu_binary: str, tmp_path: Path) -> None:
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(os.urandom(4096))
    reached, why = boot_probe(qemu_binary, bogus, deadline=10, accel="tcg")
    assert not reached
    assert "tcg" in why


def test_explicit_accel_skips_the_probe(tmp_path: Path) -> None:
    for accel in ("kvm", "tcg"):
        config = HypervisorConfig(qemu_accel=accel, qemu_binary="/nonexistent/qemu")
        assert choose_accel(config, tmp_path / "no-kernel", cache=tmp_path) == accel
    assert not (tmp_path / "kvm-probe").exists()


def test_init_program_is_a_static_elf() -> None:
    program = probe.init_program(b"hello\n")
    assert program[:4] == b"\x7fELF" and program[4] == 2  # 64-bit
    assert program.endswith(b"hello\n")
    archive = probe.probe_initramfs()
    assert archive.startswith(b"070701") and b"TRAILER!!!" in archive and b"dev/console" in archive
