"""An independent reader of a config-space dump, used as the test oracle.

It walks capability chains the way Linux does, from the bytes the guest saw,
without importing the device model it is checking.
"""

from __future__ import annotations

import struct


class ConfigDump:
    def __init__(self, hexdump: str) -> None:
        self.raw = bytes.fromhex(hexdump)

    def u8(self, off: int) -> int:
        return self.raw[off]

    def u16(self, off: int) -> int:
        return int(struct.unpack_from("<H", self.raw, off)[0])

    def u32(self, off: int) -> int:
        return int(struct.unpack_from("<I", self.raw, off)[0])

    def capabilities(self) -> dict[int, int]:
        """Standard capability id -> offset."""
        caps: dict[int, int] = {}
        if not self.u16(0x06) & 0x10:
            return caps
        off, seen = self.u8(0x34) & 0xFC, 0
        while off and seen < 48:
            caps.setdefault(self.u8(off), off)
            off, seen = self.u8(off + 1) & 0xFC, seen + 1
        return caps

    def ext_capabilities(self) -> dict[int, int]:
        """Extended capability id -> offset (first instance)."""
        caps: dict[int, int] = {}
        off, seen = 0x100, 0
        while off and seen < 128 and off + 4 <= len(self.raw):
            hdr = self.u32(off)
            if hdr in (0, 0xFFFFFFFF):
                break
            caps.setdefault(hdr & 0xFFFF, off)
            off, seen = (hdr >> 20) & 0xFFC, seen + 1
        return caps

    def ide_selective_blocks(self) -> list[int] | None:
        """Offsets of the Selective IDE Stream register blocks of the IDE extended
        capability (ID 0x30), or None without one.  Layout of PCIe r6.2 §7.9.26:
        Link IDE blocks (8 bytes per TC) after the IDE Control register, then per
        stream 20 bytes plus 12 per address association block."""
        off = self.ext_capabilities().get(0x30)
        if off is None:
            return None
        cap = self.u32(off + 4)
        if not cap & 0x2:
            return []
        nr_link = ((cap >> 13) & 0x7) + 1 if cap & 0x1 else 0
        pos = off + 0x0C + 8 * nr_link
        blocks = []
        for _ in range(((cap >> 16) & 0xFF) + 1):
            if pos + 20 > len(self.raw):
                break
            blocks.append(pos)
            pos += 20 + 12 * (self.u32(pos) & 0xF)
        return blocks

    def ide_selective_controls(self) -> list[int] | None:
        """Selective IDE Stream Control register of each stream."""
        blocks = self.ide_selective_blocks()
        return None if blocks is None else [self.u32(b + 4) for b in blocks]

    def ide_stream_state(self, stream_id: int) -> int | None:
        """State (Selective IDE Stream Status bits 3:0) of the enabled stream with
        `stream_id`, or None if no enabled stream has it."""
        for b in self.ide_selective_blocks() or []:
            ctl = self.u32(b + 4)
            if ctl & 1 and ctl >> 24 == stream_id:
                return self.u32(b + 8) & 0xF
        return None
