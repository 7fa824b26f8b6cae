"""Which VM backend ``vmsandbox dev`` runs on this machine: the most isolating one it can.

Cloud Hypervisor needs its binary, a usable ``/dev/kvm`` and a guest image; QEMU needs its
binary and a guest image (KVM when a boot probe shows it works, else TCG); without either the
``process`` backend runs sandboxes as namespaced processes, with no VM isolation, and says so.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vmsandbox`` (default ``~/.cache/vmsandbox``): guest image, dev kubeconfig."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmsandbox"


@dataclass(frozen=True)
class Backend:
    name: str
    why: str


def default_guest_image_dir() -> Path:
    env = os.environ.get("VMSANDBOX_GUEST_IMAGE_DIR")
    return Path(env) if env else cache_dir() / "guest-image"


def kvm_usable(path: Path = Path("/dev/kvm")) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_backend(
    *, cloud_hypervisor: str | None, qemu: str | None, kvm: bool, guest_image: Path | None
) -> Backend:
    """The most isolating backend this machine can run, and the reason for the choice."""
    image_note = (
        f"a guest image in {guest_image}"
        if guest_image
        else "no guest image (run `vmsandbox-guest-image build`)"
    )
    if cloud_hypervisor and kvm and guest_image:
        return Backend("cloud-hypervisor", f"{cloud_hypervisor} and /dev/kvm are usable, {image_note}")
    if qemu and guest_image:
        missing = "no cloud-hypervisor binary" if not cloud_hypervisor else "/dev/kvm is not usable"
        accel = (
            "KVM if a boot probe shows it works (an openable /dev/kvm can still hang a guest), else TCG"
            if kvm
            else "TCG (slow: no usable /dev/kvm)"
        )
        return Backend("qemu", f"{missing}; {qemu} found with {image_note}, accelerated by {accel}")
    reasons = []
    if not cloud_hypervisor and not qemu:
        reasons.append("neither cloud-hypervisor nor qemu-system-x86_64 is installed")
    elif not guest_image:
        reasons.append(image_note)
    else:
        reasons.append("/dev/kvm is not usable and qemu is missing")
    return Backend(
        "process",
        "; ".join(reasons)
        + ": sandboxes run as namespaced processes WITHOUT VM isolation (development only)",
    )


def detect_backend() -> Backend:
    image = default_guest_image_dir()
    return choose_backend(
        cloud_hypervisor=shutil.which("cloud-hypervisor"),
        qemu=shutil.which("qemu-system-x86_64"),
        kvm=kvm_usable(),
        guest_image=image if (image / "manifest.json").is_file() else None,
    )
