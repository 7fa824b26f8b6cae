"""Which kernel modules the initramfs carries, resolved from the kernel's own ``modules.dep``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsandbox.guest.image.errors import GuestImageError

#: What the guest cannot do without: PCI transport, root and container disks, the agent's
#: channels (virtio-serial under QEMU, vsock under Cloud Hypervisor), entropy, the root overlay,
#: and the sandbox's NIC.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport",
    "virtio_rng",
    "ext4",
    "overlay",
    "virtio_net",
)

#: Virtio device types (the virtio spec's device ids) whose drivers load only when the VM has
#: such a device at boot: QEMU here has no vsock, and a VM without a virtio-serial port or an
#: entropy device needs neither driver. None of these is ever hot-plugged; a NIC is (a claimed
#: pool member's), so ``virtio_net`` always loads.
VIRTIO_CONSOLE = 3
VIRTIO_RNG = 4
VIRTIO_VSOCK = 19
DEVICE_MODULES: dict[str, int] = {
    "virtio_console": VIRTIO_CONSOLE,
    "virtio_rng": VIRTIO_RNG,
    "vsock": VIRTIO_VSOCK,
    "vmw_vsock_virtio_transport": VIRTIO_VSOCK,
}

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str:
    """kmod's canonical name: basename without suffix, dashes as underscores."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


class ModulePlan(BaseModel):
    """The modules to load, dependencies first, and the requested ones the kernel has built in."""

    model_config = ConfigDict(extra="forbid")

    #: Paths relative to ``/lib/modules/<release>/``, in load order.
    load_order: list[str]
    builtin: list[str]
    #: The paths to load only when the VM has a virtio device of one of these types at boot
    #: (:data:`DEVICE_MODULES` and what only they depend on); every other path always loads.
    only_with: dict[str, list[int]] = {}

    @property
    def names(self) -> list[str]:
        return [module_name(path) for path in self.load_order]


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Map module name -> (its path, paths it depends on) from ``modules.dep`` text."""
    table: dict[str, tuple[str, list[str]]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        path, sep, deps = line.partition(":")
        if not sep:
            raise GuestImageError(f"modules.dep line {number} has no ':': {line!r}", step="kernel-modules")
        table[module_name(path.strip())] = (path.strip(), deps.split())
    return table


def parse_modules_builtin(text: str) -> set[str]:
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def resolve(requested: list[str] | tuple[str, ...], modules_dep: str, modules_builtin: str) -> ModulePlan:
    """Order the requested modules and their dependencies so each loads after what it needs."""
    table = parse_modules_dep(modules_dep)
    builtin_names = parse_modules_builtin(modules_builtin)
    by_path = {path: name for name, (path, _deps) in table.items()}
    order: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(name: str, wanted_by: str | None) -> None:
        if name in done or (name in builtin_names and name not in table):
            return
        if name in visiting:
            raise GuestImageError(f"modules.dep has a dependency cycle through {name}", step="kernel-modules")
        if name not in table:
            who = f" (needed by {wanted_by})" if wanted_by else ""
            raise GuestImageError(
                f"module {name!r}{who} is neither built into the kernel nor listed in modules.dep",
                step="kernel-modules",
            )
        visiting.add(name)
        path, deps = table[name]
        for dep_path in deps:
            visit(by_path.get(dep_path, module_name(dep_path)), name)
        visiting.discard(name)
        done.add(name)
        order.append(path)

    builtin: list[str] = []
    for raw in requested:
        name = module_name(raw)
        if name in builtin_names and name not in table:
            builtin.append(name)
        else:
            visit(name, None)
    return ModulePlan(load_order=order, builtin=builtin, only_with=_only_with(requested, table, by_path))


def _only_with(
    requested: list[str] | tuple[str, ...],
    table: dict[str, tuple[str, list[str]]],
    by_path: dict[str, str],
) -> dict[str, list[int]]:
    """For each path only device modules need (directly or through their dependencies), the
    device types that need it; a path any other requested module needs is absent: it always loads."""

    def closure(name: str, into: set[str]) -> set[str]:
        if name in table and table[name][0] not in into:
            path, deps = table[name]
            into.add(path)
            for dep in deps:
                closure(by_path.get(dep, module_name(dep)), into)
        return into

    always: set[str] = set()
    types: dict[str, set[int]] = {}
    for raw in requested:
        name = module_name(raw)
        device = DEVICE_MODULES.get(name)
        for path in closure(name, set()):
            if device is None:
                always.add(path)
            else:
                types.setdefault(path, set()).add(device)
    return {path: sorted(found) for path, found in types.items() if path not in always}


def read_plan(modules_dir: Path, requested: list[str] | tuple[str, ...]) -> ModulePlan:
    """Resolve against ``/lib/modules/<release>`` of an extracted kernel (after ``depmod``)."""
    try:
        dep = (modules_dir / "modules.dep").read_text()
        builtin_path = modules_dir / "modules.builtin"
        builtin = builtin_path.read_text() if builtin_path.exists() else ""
    except OSError as exc:
        raise GuestImageError(f"cannot read {modules_dir}: {exc}", step="kernel-modules") from exc
    return resolve(requested, dep, builtin)
