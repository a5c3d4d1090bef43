"""What a kernel image is, before QEMU is asked to boot it.

QEMU's `-kernel` takes an x86 bzImage (Linux boot protocol,
Documentation/arch/x86/boot.rst) or an uncompressed ELF `vmlinux`; the ELF
is booted only through the x86/HVM direct boot ABI ("PVH"), whose entry
point the kernel publishes as an ELF note: owner "Xen", type
XEN_ELFNOTE_PHYS32_ENTRY (18, include/xen/interface/elfnote.h), in a
PT_NOTE segment.  A vmlinux built without CONFIG_PVH has no such note and
QEMU refuses it ("Error loading uncompressed kernel without PVH ELF Note").

The release string (`uname -r`) is read from the image itself: the boot
protocol's `kernel_version` pointer for a bzImage, the `linux_banner`
("Linux version RELEASE (...") for a vmlinux.  Comparing it with a build
tree's include/config/kernel.release tells whether modules built in that
tree will load into this kernel.
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path

from construct import Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

# ELF64, little endian only: the guest is x86-64 (System V gABI, "ELF Header").
ELF64_HEADER = Struct(
    "magic" / Const(b"\x7fELF"),
    "ei_class" / Int8ul,  # 2 = ELFCLASS64
    "ei_data" / Int8ul,  # 1 = ELFDATA2LSB
    "ei_rest" / Bytes(10),
    "e_type" / Int16ul,
    "e_machine" / Int16ul,  # 62 = EM_X86_64
    "e_version" / Int32ul,
    "e_entry" / Int64ul,
    "e_phoff" / Int64ul,
    "e_shoff" / Int64ul,
    "e_flags" / Int32ul,
    "e_ehsize" / Int16ul,
    "e_phentsize" / Int16ul,
    "e_phnum" / Int16ul,
    "e_shentsize" / Int16ul,
    "e_shnum" / Int16ul,
    "e_shstrndx" / Int16ul,
)
ELF64_PHDR = Struct(
    "p_type" / Int32ul,
    "p_flags" / Int32ul,
    "p_offset" / Int64ul,
    "p_vaddr" / Int64ul,
    "p_paddr" / Int64ul,
    "p_filesz" / Int64ul,
    "p_memsz" / Int64ul,
    "p_align" / Int64ul,
)
ELF_NOTE_HEADER = Struct("namesz" / Int32ul, "descsz" / Int32ul, "type" / Int32ul)
ELFCLASS64, ELFDATA2LSB, EM_X86_64, PT_NOTE = 2, 1, 62, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18

# The x86 boot protocol's setup header fields we read (boot.rst, "The real-mode
# kernel header"): the "HdrS" signature at 0x202 and kernel_version at 0x20e,
# a pointer to the version string less 0x200.
SETUP_HEADER_OFFSET = 0x202
SETUP_HEADER = Struct(
    "header" / Const(b"HdrS"),
    "version" / Int16ul,
    "realmode_swtch" / Int32ul,
    "start_sys_seg" / Int16ul,
    "kernel_version" / Int16ul,
)

_BANNER = re.compile(rb"Linux version (\S+) \(")


class KernelImageError(ValueError):
    """The file is not a kernel QEMU can boot; the message says what to do."""


@dataclass(frozen=True)
class KernelImage:
    path: Path
    kind: str  # "bzImage" or "vmlinux"
    release: str | None
    pvh: bool  # a vmlinux's PVH entry note (always True for a bzImage: not needed)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _has_pvh_note(data: mmap.mmap | bytes) -> bool:
    hdr = ELF64_HEADER.parse(data[:ELF64_HEADER.sizeof()])
    phsize = ELF64_PHDR.sizeof()
    for i in range(hdr.e_phnum):
        off = hdr.e_phoff + i * hdr.e_phentsize
        ph = ELF64_PHDR.parse(data[off:off + phsize])
        if ph.p_type != PT_NOTE:
            continue
        pos, end = ph.p_offset, ph.p_offset + ph.p_filesz
        while pos + ELF_NOTE_HEADER.sizeof() <= end:
            note = ELF_NOTE_HEADER.parse(data[pos:pos + ELF_NOTE_HEADER.sizeof()])
            name_at = pos + ELF_NOTE_HEADER.sizeof()
            name = bytes(data[name_at:name_at + note.namesz]).rstrip(b"\0")
            if name == b"Xen" and note.type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos = name_at + _pad4(note.namesz) + _pad4(note.descsz)
    return False


def _banner_release(data: mmap.mmap | bytes) -> str | None:
    m = _BANNER.search(data)
    return m[1].decode(errors="replace") if m else None


def _bzimage_release(data: mmap.mmap | bytes) -> str | None:
    hdr = SETUP_HEADER.parse(data[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + SETUP_HEADER.sizeof()])
    if not hdr.kernel_version:
        return None
    start = hdr.kernel_version + 0x200
    end = data.find(b"\0", start, start + 256)
    if end < 0:
        return None
    words = bytes(data[start:end]).decode(errors="replace").split()
    return words[0] if words else None


def inspect_image(path: Path) -> KernelImage:
    """Classify `path` (bzImage or x86-64 vmlinux), read its release and, for
    an ELF, whether it carries the PVH note."""
    if not path.is_file():
        raise KernelImageError(f"{path}: no such file")
    with path.open("rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise KernelImageError(f"{path}: empty file, not a kernel image") from None
    with data:
        if data[:4] == b"\x7fELF":
            if len(data) < ELF64_HEADER.sizeof():
                raise KernelImageError(f"{path}: truncated ELF file")
            hdr = ELF64_HEADER.parse(data[:ELF64_HEADER.sizeof()])
            if (hdr.ei_class, hdr.ei_data, hdr.e_machine) != (ELFCLASS64, ELFDATA2LSB, EM_X86_64):
                raise KernelImageError(f"{path}: an ELF file, but not an x86-64 kernel "
                                       f"(class {hdr.ei_class}, machine {hdr.e_machine})")
            release = _banner_release(data)
            if release is None:
                raise KernelImageError(f"{path}: an x86-64 ELF file without a \"Linux version\" "
                                       "banner: not a kernel vmlinux")
            return KernelImage(path, "vmlinux", release, _has_pvh_note(data))
        end = SETUP_HEADER_OFFSET + SETUP_HEADER.sizeof()
        if len(data) >= end and data[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + 4] == b"HdrS":
            return KernelImage(path, "bzImage", _bzimage_release(data), True)
    raise KernelImageError(
        f"{path}: neither a bzImage nor an ELF vmlinux (use arch/x86/boot/bzImage of your build)")
