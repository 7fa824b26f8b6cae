"""Whether KVM actually works, found by booting, not by looking at ``/dev/kvm``.

Some hosts expose ``/dev/kvm`` that cannot run a stock kernel (nested PVM hosts: the guest
never leaves early boot). So "auto" boots the guest kernel under ``-accel kvm`` with a
throw-away initramfs whose ``/init`` is a 200-byte static program that writes a marker to the
console and powers off. A marker within a short deadline means KVM is usable. The verdict is
cached in a file keyed by the host kernel, the QEMU version and the guest kernel's digest, so
short-lived runtime processes pay for the probe once per host.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from vmsandbox.hypervisor.config import HypervisorConfig

log = logging.getLogger("vmsandbox.hypervisor.qemu")

Accel = Literal["kvm", "tcg"]

MARKER = b"vmsandbox-kvm-probe: init reached\n"
#: A working KVM reaches init in well under a second; TCG needs ~4 s, a hung one never does.
PROBE_DEADLINE = 4.0
KVM_DEVICE = Path("/dev/kvm")
CACHE_ENV = "VMSANDBOX_CACHE_DIR"

_fallback_logged = False


def cache_dir() -> Path:
    """``$VMSANDBOX_CACHE_DIR`` or ``~/.cache/vmsandbox``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vmsandbox")


class KvmVerdict(BaseModel):
    """The outcome of one probe, as cached."""

    usable: bool
    reason: str
    key: str
    probed_at: float
    probe_seconds: float


def init_program(message: bytes, *, power_off: bool = True) -> bytes:
    """A static x86-64 ELF: write(1, message), then reboot(POWER_OFF) or pause() forever."""
    base, header_size = 0x400000, 64 + 56
    code = bytearray()
    code += b"\xb8\x01\x00\x00\x00"  # mov eax, 1 (write)
    code += b"\xbf\x01\x00\x00\x00"  # mov edi, 1
    lea_at = len(code)
    code += b"\x48\x8d\x35\x00\x00\x00\x00"  # lea rsi, [rip + message]
    code += b"\xba" + struct.pack("<I", len(message))  # mov edx, len
    code += b"\x0f\x05"  # syscall
    if power_off:
        code += b"\xb8\xa9\x00\x00\x00"  # mov eax, 169 (reboot)
        code += b"\xbf\xad\xde\xe1\xfe"  # mov edi, LINUX_REBOOT_MAGIC1
        code += b"\xbe\x69\x19\x12\x28"  # mov esi, LINUX_REBOOT_MAGIC2
        code += b"\xba\xdc\xfe\x21\x43"  # mov edx, LINUX_REBOOT_CMD_POWER_OFF
        code += b"\x0f\x05"  # syscall
        code += b"\xb8\x3c\x00\x00\x00\x31\xff\x0f\x05"  # exit(0)
    else:
        code += b"\xb8\x22\x00\x00\x00\x0f\x05\xeb\xf7"  # pause(); jmp back
    rel = len(code) - (lea_at + 7)
    code[lea_at + 3 : lea_at + 7] = struct.pack("<i", rel)
    body = bytes(code) + message
    size = header_size + len(body)
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    elf = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + header_size, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return elf + phdr + body


def _newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A minimal newc cpio: (path, mode with file type, data, (rdev major, minor))."""
    out = bytearray()
    for ino, (path, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1):
        name = path.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name), 0)
        out += b"070701" + b"".join(b"%08x" % value for value in fields) + name
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def probe_initramfs(message: bytes = MARKER, *, power_off: bool = True) -> bytes:
    """An initramfs whose whole userland is :func:`init_program`."""
    return _newc(
        [
            ("dev", 0o040755, b"", (0, 0)),
            ("dev/console", 0o020600, b"", (5, 1)),
            ("init", 0o100755, init_program(message, power_off=power_off), (0, 0)),
        ]
    )


def _qemu_version(binary: str) -> str:
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return done.stdout.splitlines()[0] if done.stdout else f"unknown (exit {done.returncode})"


def cache_key(binary: str, kernel: Path) -> str:
    digest = hashlib.sha256()
    with kernel.open("rb") as image:
        for block in iter(lambda: image.read(1 << 20), b""):
            digest.update(block)
    parts = (os.uname().release, _qemu_version(binary), digest.hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def boot_probe(
    binary: str, kernel: Path, deadline: float = PROBE_DEADLINE, accel: Accel = "kvm"
) -> tuple[bool, str]:
    """Boot ``kernel`` under ``accel`` with the marker initramfs; (reached init, why)."""
    with tempfile.TemporaryDirectory(prefix="vmsandbox-kvm-probe-") as tmp:
        initrd, console = Path(tmp) / "probe.cpio", Path(tmp) / "console.log"
        initrd.write_bytes(probe_initramfs())
        cpu = "host" if accel == "kvm" else "max"
        argv = [binary, "-machine", "q35", "-accel", accel, "-cpu", cpu, "-m", "128", "-smp", "1"]
        argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1 quiet"]
        argv += ["-display", "none", "-nodefaults", "-no-user-config", "-no-reboot"]
        argv += ["-serial", f"file:{console}"]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        end = time.monotonic() + deadline
        try:
            while time.monotonic() < end:
                exited = proc.poll() is not None
                if console.exists() and MARKER.strip() in console.read_bytes():
                    return True, f"the guest kernel reached init under {accel}"
                if exited:
                    stderr = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                    return (
                        False,
                        f"QEMU exited with {proc.returncode} under {accel}: {stderr[-300:] or 'no output'}",
                    )
                time.sleep(0.02)
            return False, f"the guest kernel did not reach init within {deadline:g}s under {accel}"
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


def kvm_verdict(binary: str, kernel: Path, *, cache: Path | None = None) -> KvmVerdict:
    """The cached verdict for this host, QEMU and kernel, probing once when there is none."""
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return KvmVerdict(
            usable=False,
            reason=f"{KVM_DEVICE} is missing or not accessible",
            key="",
            probed_at=0,
            probe_seconds=0,
        )
    key = cache_key(binary, kernel)
    path = (cache or cache_dir()) / "kvm-probe" / f"{key}.json"
    with contextlib.suppress(OSError, ValidationError):
        return KvmVerdict.model_validate_json(path.read_text())
    started = time.monotonic()
    usable, reason = boot_probe(binary, kernel)
    verdict = KvmVerdict(
        usable=usable, reason=reason, key=key, probed_at=time.time(), probe_seconds=time.monotonic() - started
    )
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(verdict.model_dump_json(indent=2))
        tmp.replace(path)
    return verdict


def choose_accel(config: HypervisorConfig, kernel: Path, *, cache: Path | None = None) -> Accel:
    """The accelerator to boot with: the configured one, or KVM only when a probe proved it works."""
    global _fallback_logged
    if config.qemu_accel != "auto":
        return config.qemu_accel
    verdict = kvm_verdict(config.qemu_binary, kernel, cache=cache)
    if verdict.usable:
        return "kvm"
    if not _fallback_logged:
        _fallback_logged = True
        log.warning("qemu: KVM unusable (%s), using TCG", verdict.reason)
    return "tcg"
