"""Property test: RegisterFile accesses agree with a per-byte reference model."""

from __future__ import annotations

from typing import Any

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


# --- the read shadow -----------------------------------------------------------------


def _reference_read(rf: RegisterFile, offset: int, count: int) -> bytes:
    """What the register model says a read returns, byte by byte, from each register's
    own read() (on_read or stored value), ignoring the file's shadow image."""
    out = bytearray(count)
    for i in range(count):
        reg = rf.register_at(offset + i)
        if reg is not None:
            out[i] = (reg.read() >> (8 * (offset + i - reg.offset))) & 0xFF
    return bytes(out)


def _live_file() -> tuple[RegisterFile, list[int]]:
    """LAYOUT plus a model-backed register whose value changes on every read."""
    rf = build()
    counter = [0]

    def live() -> int:
        counter[0] += 1
        return 0xA5000000 | counter[0]

    rf.add(Register("LIVE", 0x18, 4, on_read=live))
    return rf, counter


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("write"), access),
    st.tuples(st.just("assign"), st.sampled_from([off for off, *_ in LAYOUT]),
              st.integers(0, 2**64 - 1)),
    st.tuples(st.just("reset"), st.booleans()),
), max_size=25), st.integers(0, SIZE - 1), st.integers(1, 8))
def test_shadowed_reads_equal_the_register_model(
    steps: list[tuple[Any, ...]], read_off: int, read_len: int
) -> None:
    """Writes, direct model updates of `value` and FLR-style resets: every read equals
    the per-register reference, and a read touching the live register calls it."""
    rf, counter = _live_file()
    for step in steps:
        if step[0] == "write":
            off, data = step[1]
            rf.write(off, data)
        elif step[0] == "assign":
            reg = rf.register_at(int(step[1]))
            assert reg is not None
            reg.value = int(step[2]) & reg.mask
        else:
            rf.reset(keep_sticky=bool(step[1]))
    read_len = min(read_len, SIZE - read_off)
    before = counter[0]
    got = rf.read(read_off, read_len)
    touches_live = read_off < 0x1C and read_off + read_len > 0x18
    assert counter[0] == before + (1 if touches_live else 0)
    if touches_live:
        counter[0] -= 1  # the reference read calls it again: same value
    assert got == _reference_read(rf, read_off, read_len)
