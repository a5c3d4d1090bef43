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
