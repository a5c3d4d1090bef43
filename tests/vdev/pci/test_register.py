"""Register masks and byte-granular accesses."""

from __future__ import annotations

import pytest

from vdev.pci.register import Register, RegisterFile


def make_file() -> tuple[RegisterFile, list[tuple[str, int, int]]]:
    calls: list[tuple[str, int, int]] = []
    rf = RegisterFile(0x20, "t")
    rf.add(Register("RO", 0x00, 4, reset=0x11223344))
    rf.add(Register("RW", 0x04, 4, reset=0x0000FF00, rw=0x0000FFFF))
    rf.add(Register("W1C", 0x08, 2, reset=0xF00F, w1c=0xF000, rw=0x000F))
    rf.add(
        Register(
            "HOOK",
            0x0C,
            4,
            rw=0xFFFFFFFF,
            sticky=0xFF000000,
            on_write=lambda v, be: calls.append(("HOOK", v, be)),
        )
    )
    rf.add(Register("LIVE", 0x10, 4, on_read=lambda: 0xCAFEF00D))
    return rf, calls


def test_read_only_bits_ignore_writes() -> None:
    rf, _ = make_file()
    rf.write_int(0x00, 4, 0xFFFFFFFF)
    assert rf.read_int(0x00, 4) == 0x11223344


def test_read_write_mask_only_touches_rw_bits() -> None:
    rf, _ = make_file()
    rf.write_int(0x04, 4, 0xABCD1234)
    assert rf.read_int(0x04, 4) == 0x00001234


def test_write_one_to_clear() -> None:
    rf, _ = make_file()
    rf.write_int(0x08, 2, 0x3000)  # clear two of the four W1C bits, RW nibble <- 0
    assert rf.read_int(0x08, 2) == 0xC000
    rf.write_int(0x08, 2, 0x0005)  # writing 0 to W1C bits leaves them; RW nibble <- 5
    assert rf.read_int(0x08, 2) == 0xC005


@pytest.mark.parametrize("offset,size", [(0, 1), (1, 1), (2, 2), (1, 2), (3, 4), (5, 7), (0, 0x20)])
def test_reads_at_any_alignment_match_the_byte_image(offset: int, size: int) -> None:
    rf, _ = make_file()
    image = b"".join(rf.read(i, 1) for i in range(0x20))
    assert rf.read(offset, size) == image[offset : offset + size]


def test_unaligned_write_spanning_registers() -> None:
    rf, calls = make_file()
    # bytes 0x06..0x0D: RW upper half, W1C (clear all), 2 pad bytes? no: 0x0A..0x0B unmapped
    rf.write(0x06, bytes([0xAA, 0xBB, 0x0F, 0xF0, 0x99, 0x99, 0x12, 0x34]))
    assert rf.read_int(0x04, 4) == 0x0000FF00  # upper half of RW is RO
    assert rf.read_int(0x08, 2) == 0x000F  # W1C bits cleared, RW nibble set
    assert rf.read_int(0x0A, 2) == 0  # unmapped reads 0
    assert rf.read_int(0x0C, 4) == 0x3412
    assert calls == [("HOOK", 0x3412, 0xFFFF)]


def test_byte_write_into_the_middle_of_a_register() -> None:
    rf, calls = make_file()
    rf.write(0x0E, b"\x5a")
    assert rf.read_int(0x0C, 4) == 0x005A0000
    assert calls == [("HOOK", 0x005A0000, 0x00FF0000)]


def test_live_register_reads_model_and_ignores_writes() -> None:
    rf, _ = make_file()
    rf.write_int(0x10, 4, 0)
    assert rf.read_int(0x10, 4) == 0xCAFEF00D
    assert rf.read(0x11, 2) == bytes([0xF0, 0xFE])


def test_reset_keeps_sticky_bits() -> None:
    rf, _ = make_file()
    rf.write_int(0x0C, 4, 0xAABBCCDD)
    rf.write_int(0x04, 4, 0x1234)
    rf.reset(keep_sticky=True)
    assert rf.read_int(0x0C, 4) == 0xAA000000
    assert rf.read_int(0x04, 4) == 0x0000FF00
    rf.reset(keep_sticky=False)
    assert rf.read_int(0x0C, 4) == 0


def test_hooks_run_after_all_registers_are_stored() -> None:
    rf = RegisterFile(8)
    seen: list[int] = []
    second = Register("B", 4, 4, rw=0xFFFFFFFF)
    rf.add(Register("A", 0, 4, rw=0xFFFFFFFF, on_write=lambda v, be: seen.append(second.value)))
    rf.add(second)
    rf.write(0, (1).to_bytes(4, "little") + (7).to_bytes(4, "little"))
    assert seen == [7]


def test_overlap_and_bounds_are_rejected() -> None:
    rf = RegisterFile(8)
    rf.add(Register("A", 0, 4))
    with pytest.raises(ValueError, match="overlaps"):
        rf.add(Register("B", 2, 2))
    with pytest.raises(ValueError, match="out of range"):
        rf.add(Register("C", 6, 4))
    with pytest.raises(ValueError):
        rf.read(6, 4)


def test_register_mask_validation() -> None:
    with pytest.raises(ValueError):
        Register("X", 0, 2, rw=0x10000)
    with pytest.raises(ValueError):
        Register("X", 0, 4, rw=1, w1c=1)
