"""The config-space oracle's IDE decoding, from the layout of PCIe r6.2 §7.9.26."""

from __future__ import annotations

import struct

from vdev.vm.config_dump import ConfigDump


def dump(dwords: dict[int, int]) -> ConfigDump:
    raw = bytearray(4096)
    for off, value in dwords.items():
        struct.pack_into("<I", raw, off, value)
    return ConfigDump(raw.hex())


def test_selective_stream_controls_behind_link_blocks() -> None:
    # IDE at 0x100: Link IDE with 2 TCs (2 x 8 bytes), 2 Selective IDE Streams,
    # the first with one address association block (32 bytes), the second none.
    d = dump({
        0x100: 0x30 | 1 << 16,                       # ID 0x30, version 1, last
        0x104: 0x1 | 0x2 | 1 << 13 | 1 << 16,        # Link, Selective, 2 TCs, 2 streams
        0x10C: 0xAA000001, 0x114: 0xBB000001,         # Link IDE Stream Control 0/1
        0x11C: 1, 0x120: 0x05000001,                  # stream 0: 1 block, Stream ID 5, EN
        0x13C: 0, 0x140: 0xFF000000,                  # stream 1 at 0x11C + 32
    })
    assert d.ide_selective_controls() == [0x05000001, 0xFF000000]
    assert d.ide_selective_blocks() == [0x11C, 0x13C]


def test_state_of_the_enabled_stream_with_an_id() -> None:
    d = dump({
        0x100: 0x30 | 1 << 16, 0x104: 0x2 | 1 << 16,  # 2 streams, no Link IDE
        0x110: 0x07000000, 0x114: 0x0,                # stream 0: ID 7, not enabled
        0x124: 0x07000001, 0x128: 0x2,                # stream 1: ID 7, enabled, Secure
    })
    assert d.ide_stream_state(7) == 2
    assert d.ide_stream_state(8) is None


def test_no_ide_capability() -> None:
    assert dump({0x100: 0x2E | 1 << 16}).ide_selective_controls() is None
    assert dump({0x100: 0x30 | 1 << 16, 0x104: 0x1}).ide_selective_controls() == []
