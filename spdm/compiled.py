"""`construct` fields whose compiled form keeps the interpreter's checks.

`Struct.compile()` turns a declaration into generated Python that parses and builds
3-4x faster than construct's interpreter, which is the largest Python cost of an SPDM
handshake.  But construct's code generator drops checks the interpreter makes: a short
read yields a short `bytes` (or `struct.error`), a `Bytes` field builds from a value of
any length, `Array` builds whatever count it is handed and `Const` builds over a wrong
value.  The classes here are drop-in replacements for the construct ones the SPDM
declarations use; their generated code calls the helpers below, which raise the same
`ConstructError` subclasses the interpreter does.

`compiled(fmt)` compiles a declaration only when every field in it is one of these (or
a construct class whose generated code has no gap we know of); anything else, e.g. a
field sized by a Python function, is either wrapped in `Interpreted` by the declaration
or makes `compiled()` hand back the declaration itself, so the fast path never changes
what a message means.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import construct
from construct import (
    ConstError,
    Container,
    ExprMixin,
    FormatFieldError,
    IntegerError,
    RangeError,
    StreamError,
    StringError,
)

# --- helpers called by the generated code ---------------------------------------------------


def read_exact(io: Any, length: int) -> bytes:
    """construct.core.stream_read, without the path."""
    if length < 0:
        raise StreamError(f"length must be non-negative, found {length}")
    data: bytes = io.read(length)
    if len(data) != length:
        raise StreamError(
            f"stream read less than specified amount, expected {length}, found {len(data)}"
        )
    return data


def unpack_exact(packer: struct.Struct, io: Any) -> Any:
    """FormatField: read_exact and unpack in one call (one per field on the hot path)."""
    data = io.read(packer.size)
    if len(data) != packer.size:
        raise StreamError(f"stream read less than specified amount, expected {packer.size}, "
                          f"found {len(data)}")
    return packer.unpack(data)[0]


def write_exact(io: Any, data: Any, length: int) -> Any:
    """Bytes._build: an int builds as big-endian bytes, anything else must fit exactly."""
    if isinstance(data, int):
        data = construct.integer2bytes(data, length)
    if type(data) is bytearray:
        data = bytes(data)
    if not isinstance(data, bytes):
        raise StringError(f"given non-bytes value {data!r}, perhaps unicode?")
    if length < 0:
        raise StreamError(f"length must be non-negative, found {length}")
    if len(data) != length:
        raise StreamError(f"bytes object of wrong length, expected {length}, found {len(data)}")
    io.write(data)
    return data


def write_greedy(io: Any, data: Any) -> Any:
    data = bytes(data) if type(data) is bytearray else data
    if not isinstance(data, bytes):
        raise StringError(f"given non-bytes value {data!r}, perhaps unicode?")
    io.write(data)
    return data


def pack_field(packer: struct.Struct, io: Any, obj: Any) -> Any:
    try:
        io.write(packer.pack(obj))
    except Exception as exc:
        raise FormatFieldError(
            f"struct {packer.format!r} error during building, given value {obj!r}"
        ) from exc
    return obj


def parse_int(io: Any, length: int, signed: bool, swapped: bool) -> int:
    if length <= 0:
        raise IntegerError(f"length {length} must be positive")
    data = read_exact(io, length)
    return int.from_bytes(data, "little" if swapped else "big", signed=signed)


def build_int(io: Any, obj: Any, length: int, signed: bool, swapped: bool) -> Any:
    if not isinstance(obj, int):
        raise IntegerError(f"value {obj} is not an integer")
    if length <= 0:
        raise IntegerError(f"length {length} must be positive")
    try:
        io.write(obj.to_bytes(length, "little" if swapped else "big", signed=signed))
    except OverflowError as exc:
        raise IntegerError(f"number {obj} does not fit width {length}, signed {signed}") from exc
    return obj


def array_count(count: int) -> int:
    if not count >= 0:
        raise RangeError(f"invalid count {count}")
    return count


def array_items(obj: Any, count: int) -> Any:
    array_count(count)
    if not len(obj) == count:
        raise RangeError(f"expected {count} elements, found {len(obj)}")
    return obj


def const_value(obj: Any, value: Any) -> Any:
    if obj not in (None, value):
        raise ConstError(f"building expected None or {value!r} but got {obj!r}")
    return value


def parse_const(obj: Any, value: Any) -> Any:
    if not obj == value:
        raise ConstError(f"parsing expected {value!r} but parsed {obj!r}")
    return obj


_IMPORT = "from spdm.compiled import (read_exact, unpack_exact, write_exact, write_greedy, " \
    "pack_field, parse_int, build_int, array_count, array_items, const_value, parse_const)"


# --- the fields -------------------------------------------------------------------------------


class FormatField(construct.FormatField):  # type: ignore[misc]
    def _emitparse(self, code: Any) -> str:
        code.append(_IMPORT)
        name = f"formatfield_{code.allocateId()}"
        code.append(f"{name} = struct.Struct({self.fmtstr!r})")
        return f"unpack_exact({name}, io)"

    def _emitbuild(self, code: Any) -> str:
        code.append(_IMPORT)
        name = f"formatfield_{code.allocateId()}"
        code.append(f"{name} = struct.Struct({self.fmtstr!r})")
        return f"pack_field({name}, io, obj)"


class BytesInteger(construct.BytesInteger):  # type: ignore[misc]
    def _emitparse(self, code: Any) -> str:
        code.append(_IMPORT)
        return f"parse_int(io, {self.length!r}, {self.signed!r}, {self.swapped!r})"

    def _emitbuild(self, code: Any) -> str:
        code.append(_IMPORT)
        return f"build_int(io, obj, {self.length!r}, {self.signed!r}, {self.swapped!r})"


class Bytes(construct.Bytes):  # type: ignore[misc]
    def _emitparse(self, code: Any) -> str:
        code.append(_IMPORT)
        return f"read_exact(io, {self.length!r})"

    def _emitbuild(self, code: Any) -> str:
        code.append(_IMPORT)
        return f"write_exact(io, obj, {self.length!r})"


class _GreedyBytes(type(construct.GreedyBytes)):  # type: ignore[misc]
    def _emitbuild(self, code: Any) -> str:
        code.append(_IMPORT)
        return "write_greedy(io, obj)"


class Array(construct.Array):  # type: ignore[misc]
    def _emitparse(self, code: Any) -> str:
        code.append(_IMPORT)
        item = self.subcon._compileparse(code)
        return f"ListContainer(({item}) for i in range(array_count({self.count!r})))"

    def _emitbuild(self, code: Any) -> str:
        code.append(_IMPORT)
        item = self.subcon._compilebuild(code)
        return (f"ListContainer(reuse(e, lambda obj: ({item})) "
                f"for e in array_items(obj, {self.count!r}))")


class Const(construct.Const):  # type: ignore[misc]
    def _emitparse(self, code: Any) -> str:
        code.append(_IMPORT)
        return f"parse_const({self.subcon._compileparse(code)}, {_literal(self.value)})"

    def _emitbuild(self, code: Any) -> str:
        code.append(_IMPORT)
        item = self.subcon._compilebuild(code)
        return f"reuse(const_value(obj, {_literal(self.value)}), lambda obj: ({item}))"


class Interpreted(construct.Subconstruct):  # type: ignore[misc]
    """A field left to construct's interpreter inside a compiled struct, because its size,
    count or condition is a Python function the code generator cannot inline."""

    def _emitparse(self, code: Any) -> str:
        raise NotImplementedError  # construct then calls this field's _parse

    def _emitbuild(self, code: Any) -> str:
        raise NotImplementedError


def _literal(value: Any) -> str:
    # IntEnum members (the SPDM request/response codes) repr as <Req.X: n>.
    return repr(int(value)) if isinstance(value, int) else repr(value)


Int8ul = FormatField("<", "B")
Int16ul = FormatField("<", "H")
Int32ul = FormatField("<", "L")
Int24ul = BytesInteger(3, swapped=True)
GreedyBytes = _GreedyBytes()


# --- compiling a declaration ----------------------------------------------------------------

_CHECKED_LEAVES = (FormatField, BytesInteger, Bytes, _GreedyBytes, type(construct.Pass))
_TRANSPARENT = (construct.Struct, construct.Renamed, construct.Default, construct.Rebuild,
                construct.IfThenElse, Array, Const)
_compiled: dict[int, tuple[Any, Any]] = {}


def _inlinable(param: Any) -> bool:
    """A size, count or condition the generator writes out as source: a constant or a
    `this` expression, never a function."""
    return isinstance(param, ExprMixin) or not callable(param)


def checked(fmt: Any) -> bool:
    """True when every field of `fmt` compiles to code with the interpreter's checks."""
    if isinstance(fmt, Interpreted):
        return True
    if isinstance(fmt, _CHECKED_LEAVES):
        return _inlinable(getattr(fmt, "length", 0))
    if not isinstance(fmt, _TRANSPARENT):
        return False
    for attr in ("count", "func", "condfunc"):
        if not _inlinable(getattr(fmt, attr, None)):
            return False
    if isinstance(fmt, construct.Default) and not _inlinable(fmt.value):
        return False
    if isinstance(fmt, construct.Struct):
        return all(checked(sc) for sc in fmt.subcons)
    if isinstance(fmt, construct.IfThenElse):
        return checked(fmt.thensubcon) and checked(fmt.elsesubcon)
    return checked(fmt.subcon)


def parse_stream(fmt: Any, stream: Any, params: dict[str, Any]) -> Any:
    """`compiled(fmt).parse_stream(stream, **params)` without construct's entry layers
    (a Container built attribute by attribute, then two calls), which cost as much as
    parsing a small message."""
    fast = compiled(fmt)
    if type(fast) is not construct.Compiled:
        return fast.parse_stream(stream, **params)
    return fast.parsefunc(stream, _context(params, parsing=True))


def build(fmt: Any, obj: Any, params: dict[str, Any]) -> bytes:
    """`compiled(fmt).build(obj, **params)`, likewise."""
    fast = compiled(fmt)
    if type(fast) is not construct.Compiled:
        out: bytes = fast.build(obj, **params)
        return out
    stream = BytesIO()
    fast.buildfunc(obj, stream, _context(params, parsing=False))
    return stream.getvalue()


def _context(params: dict[str, Any], *, parsing: bool) -> Any:
    # What Construct.parse_stream / build_stream set up for the top level.
    ctx = Container(params)
    ctx["_parsing"], ctx["_building"], ctx["_sizing"] = parsing, not parsing, False
    ctx["_params"] = ctx
    return ctx


def compiled(fmt: Any) -> Any:
    """The compiled twin of a declaration, or the declaration itself when it has a field
    whose generated code would skip a check (see `checked`).  Cached per declaration."""
    hit = _compiled.get(id(fmt))
    if hit is not None and hit[0] is fmt:
        return hit[1]
    fast = fmt.compile() if checked(fmt) else fmt
    _compiled[id(fmt)] = (fmt, fast)
    return fast


__all__ = [
    "Array", "Bytes", "BytesInteger", "Const", "Container", "FormatField", "GreedyBytes",
    "Int8ul", "Int16ul", "Int24ul", "Int32ul", "Interpreted", "build", "checked", "compiled",
    "parse_stream",
]
