"""What Cloud Hypervisor's x86_64 loader accepts as a kernel, checked from file headers only.

The real loader tries an ELF ``vmlinux`` first and needs its PVH entry note
(``XEN_ELFNOTE_PHYS32_ENTRY``, note type 18 owned by "Xen"); otherwise it tries the bzImage boot
protocol (supported again since v39). Nothing is loaded or executed here.
"""

from __future__ import annotations

import struct
from pathlib import Path

PVH_NOTE_TYPE = 18
PT_NOTE = 4


class KernelRejected(Exception):
    """The words say why, as the VMM would report it."""


def check_kernel(path: Path) -> str:
    """``"elf-pvh"`` or ``"bzimage"``; raises :class:`KernelRejected` otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise KernelRejected(f"Cannot open kernel file {path}: No such file or directory") from exc
    except OSError as exc:
        raise KernelRejected(f"Cannot open kernel file {path}: {exc.strerror}") from exc
    if data[:4] == b"\x7fELF":
        if _has_pvh_note(data):
            return "elf-pvh"
        raise KernelRejected("Error loading kernel: the ELF has no PVH entry note (KernelMissingPvhHeader)")
    if len(data) > 0x206 and data[0x1FE:0x200] == b"\x55\xaa" and data[0x202:0x206] == b"HdrS":
        return "bzimage"
    raise KernelRejected("Error loading kernel: neither a PVH ELF vmlinux nor a bzImage")


def _has_pvh_note(data: bytes) -> bool:
    if data[4] != 2:  # only ELF64 kernels boot on x86_64
        return False
    endian = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    for index in range(phnum):
        base = phoff + index * phentsize
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(endian + "IIQQQQ", data, base)
        if p_type != PT_NOTE:
            continue
        cursor, end = p_offset, p_offset + p_filesz
        while cursor + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from(endian + "III", data, cursor)
            name = data[cursor + 12 : cursor + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == PVH_NOTE_TYPE:
                return True
            cursor += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def fake_bzimage(path: Path, size: int = 4096) -> Path:
    """A file whose header passes the bzImage check (for stand-in tests; it boots nothing)."""
    image = bytearray(size)
    image[0x1FE:0x200] = b"\x55\xaa"
    image[0x202:0x206] = b"HdrS"
    path.write_bytes(bytes(image))
    return path
