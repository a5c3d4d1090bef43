"""Property test: RegisterFile accesses agree with a per-byte reference model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vdev.pci.register import Register, RegisterFile

LAYOUT = [  # (offset, size, reset, rw, w1c)
    (0x00, 4, 0x11223344, 0x00FF00FF, 0x0),
    (0x04, 2, 0xF00F, 0x000F, 0xF000),
    (0x06, 1, 0xAA, 0xF0, 0x0),
    (0x08, 8, 0x0123456789ABCDEF, 0xFFFF0000FFFF0000, 0x00000000000000FF),
    (0x14, 4, 0x0, 0xFFFFFFFF, 0x0),
]
SIZE = 0x20


def build() -> RegisterFile:
    rf = RegisterFile(SIZE)
    for off, size, reset, rw, w1c in LAYOUT:
        rf.add(Register(f"R{off:x}", off, size, reset=reset, rw=rw, w1c=w1c))
    return rf


def reference() -> tuple[list[int], list[int], list[int]]:
    """Per-byte value, RW mask and W1C mask; unmapped bytes are 0 with no masks."""
    value, rw, w1c = [0] * SIZE, [0] * SIZE, [0] * SIZE
    for off, size, reset, rwm, w1cm in LAYOUT:
        for i in range(size):
            value[off + i] = (reset >> (8 * i)) & 0xFF
            rw[off + i] = (rwm >> (8 * i)) & 0xFF
            w1c[off + i] = (w1cm >> (8 * i)) & 0xFF
    return value, rw, w1c


access = st.integers(0, SIZE - 1).flatmap(
    lambda off: st.tuples(st.just(off), st.binary(min_size=1, max_size=SIZE - off))
)


@settings(max_examples=150, deadline=None)
@given(st.lists(access, max_size=20), st.integers(0, SIZE - 1), st.integers(1, 8))
def test_random_writes_match_reference(
    writes: list[tuple[int, bytes]], read_off: int, read_len: int
) -> None:
    rf = build()
    value, rw, w1c = reference()
    for off, data in writes:
        rf.write(off, data)
        for i, b in enumerate(data):
            pos = off + i
            v = (value[pos] & ~rw[pos]) | (b & rw[pos])
            value[pos] = v & ~(b & w1c[pos]) & 0xFF
    read_len = min(read_len, SIZE - read_off)
    assert rf.read(read_off, read_len) == bytes(value[read_off : read_off + read_len])
    assert rf.read(0, SIZE) == bytes(value)
