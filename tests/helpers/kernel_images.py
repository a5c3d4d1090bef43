"""Kernel images laid out by hand from the specs, for tests: System V gABI
ELF64 header, program header and note layout; the x86 boot protocol's
setup header (Documentation/arch/x86/boot.rst)."""

from __future__ import annotations

import struct

BANNER = b"Linux version 7.3.4-dev (me@box) (gcc 12.2.0) #3 SMP\n\0"


def elf(notes: list[tuple[bytes, int, bytes]], *, machine: int = 62,
        body: bytes = BANNER) -> bytes:
    """An ELF64 LE file: header, one PT_LOAD, one PT_NOTE holding `notes`, then `body`."""
    def note(name: bytes, ntype: int, desc: bytes) -> bytes:
        n = name + b"\0"
        return (struct.pack("<III", len(n), len(desc), ntype)
                + n + b"\0" * (-len(n) % 4) + desc + b"\0" * (-len(desc) % 4))

    blob = b"".join(note(*n) for n in notes)
    phoff, phnum = 64, 2
    notes_off = phoff + 56 * phnum
    body_off = notes_off + len(blob)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    hdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0x1000000, phoff, 0, 0,
                              64, 56, phnum, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, body_off, 0, 0, len(body), len(body), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, notes_off, 0, 0, len(blob), len(blob), 4)
    return hdr + load + pnote + blob + body


def bzimage(version: bytes | None) -> bytes:
    """Setup sectors with the boot protocol header and the version string at 0x1000."""
    data = bytearray(0x2000)
    struct.pack_into("<B", data, 0x1F1, 15)  # setup_sects
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x020F)
    if version is not None:
        struct.pack_into("<H", data, 0x20E, 0x1000 - 0x200)
        data[0x1000:0x1000 + len(version) + 1] = version + b"\0"
    return bytes(data)


