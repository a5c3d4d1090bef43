"""How the fuzz tests damage a valid message: one byte, one header byte, a
truncation or trailing bytes (the four ways a wire or a buggy peer gets a message
wrong), drawn by Hypothesis so that failures shrink to the smallest damage."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def damaged(draw: st.DrawFn, msg: bytes, *, header: int, extend: int = 24,
            byte_weight: int = 1) -> bytes:
    """`msg` with one kind of damage; `header` is how many leading bytes are the
    header, `byte_weight` how much more often a random byte is changed than the
    other kinds are drawn."""
    how = draw(st.sampled_from(["byte"] * byte_weight + ["header", "truncate", "extend"]))
    b = bytearray(msg)
    if how == "byte" and b:
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    elif how == "header" and b:
        b[draw(st.integers(0, min(header, len(b)) - 1))] = draw(st.integers(0, 255))
    elif how == "truncate":
        b = b[: draw(st.integers(0, max(len(b) - 1, 0)))]
    else:
        b += draw(st.binary(min_size=1, max_size=extend))
    return bytes(b)
