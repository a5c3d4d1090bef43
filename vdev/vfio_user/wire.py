"""vfio-user wire format: every message declared once, with `construct`.

The same declarations parse and build on both sides (server and client).
Layouts follow QEMU 11's hw/vfio-user/protocol.h (docs/vfio-user-qemu.md §2, §3);
where QEMU and the specification (QEMU's docs/interop/vfio-user.rst) differ, QEMU
wins (DMA_READ/DMA_WRITE, docs/vfio-user-qemu.md §4).

All integers are little-endian ("host order" on x86, docs/vfio-user-qemu.md §2.1).
"""

from __future__ import annotations

import enum
import struct as _struct
from typing import Any, TypeAlias, cast

from construct import (
    Array,
    Bytes,
    CString,
    FormatField,
    FormatFieldError,
    GreedyBytes,
    Int16ul,
    Int32ul,
    Int64ul,
    Padded,
    Padding,
    Pass,
    Renamed,
    StreamError,
    Struct,
    this,
)

#: Parsed messages are construct Containers (attribute access, untyped).
Container: TypeAlias = Any

HEADER_SIZE = 16

#: The largest data transfer we advertise; QEMU accepts up to 64 MiB
#: (docs/vfio-user-qemu.md §3.1), 1 MiB is its own default.
MAX_DATA_XFER_SIZE = 1 << 20

#: Most fds we accept per message.  QEMU sends at most max_msg_fds in one
#: SET_IRQS; the receive cmsg buffer is sized for 16 (docs/vfio-user-qemu.md §2.3).
MAX_MSG_FDS = 8
RECV_FDS = 16

#: Largest message we accept: a data transfer plus its fixed part, with slack
#: for WRITE_MULTI and future argsz growth.  Anything bigger means the stream
#: is garbage, so the client is dropped.
MAX_MESSAGE_SIZE = MAX_DATA_XFER_SIZE + 4096


class Command(enum.IntEnum):
    """vfio-user command ids (spec "Commands" table, docs/vfio-user-qemu.md §2.2)."""

    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


class MsgType(enum.IntEnum):
    """Header flags bits 0-3 (spec "Header")."""

    REQUEST = 0
    REPLY = 1


class HeaderFlags(enum.IntFlag):
    """Header flag bits above the type nibble."""

    TYPE_MASK = 0xF
    NO_REPLY = 0x10
    ERROR = 0x20


class DmaMapFlags(enum.IntFlag):
    READ = 1
    WRITE = 2


class DmaUnmapFlags(enum.IntFlag):
    GET_DIRTY_PAGE = 1
    ALL = 2


class DeviceInfoFlags(enum.IntFlag):
    """vfio_device_info flags (linux/vfio.h)."""

    RESET = 1
    PCI = 2


class RegionInfoFlags(enum.IntFlag):
    READ = 1
    WRITE = 2
    MMAP = 4
    CAPS = 8


class IrqInfoFlags(enum.IntFlag):
    EVENTFD = 1
    MASKABLE = 2
    AUTOMASKED = 4
    NORESIZE = 8


class SetIrqsFlags(enum.IntFlag):
    DATA_NONE = 1
    DATA_BOOL = 2
    DATA_EVENTFD = 4
    MASK = 8
    UNMASK = 0x10
    TRIGGER = 0x20


SET_IRQS_DATA_BITS = SetIrqsFlags.DATA_NONE | SetIrqsFlags.DATA_BOOL | SetIrqsFlags.DATA_EVENTFD
SET_IRQS_ACTION_BITS = SetIrqsFlags.MASK | SetIrqsFlags.UNMASK | SetIrqsFlags.TRIGGER


# --- declarations ---------------------------------------------------------

Header = Struct(
    "id" / Int16ul,
    "cmd" / Int16ul,
    "size" / Int32ul,  # whole message, header included
    "flags" / Int32ul,
    "error" / Int32ul,
)

#: VERSION request and reply: major, minor, NUL-terminated JSON (spec "Version").
Version = Struct(
    "major" / Int16ul,
    "minor" / Int16ul,
    "json" / CString("utf8"),
)

#: DMA_MAP request payload, 32 bytes; at most one fd (docs/vfio-user-qemu.md §3.2).
DmaMap = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "offset" / Int64ul,
    "iova" / Int64ul,
    "size" / Int64ul,
)

#: DMA_UNMAP request payload and (echoed) reply, 24 bytes.
DmaUnmap = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "iova" / Int64ul,
    "size" / Int64ul,
)

#: DEVICE_GET_INFO request and reply (struct vfio_device_info, 16 bytes).
DeviceInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "num_regions" / Int32ul,
    "num_irqs" / Int32ul,
)

#: DEVICE_GET_REGION_INFO request and reply (struct vfio_region_info, 32 bytes).
#: We offer no MMAP (so no sparse areas); the only capability we send is a
#: device-specific region's type, after the struct (RegionInfoCapType).
RegionInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "cap_offset" / Int32ul,
    "size" / Int64ul,
    "offset" / Int64ul,
)

#: VFIO_REGION_INFO_CAP_TYPE (linux/vfio.h struct vfio_region_info_cap_type):
#: the capability header (id, version, offset of the next one or 0) and the
#: region's type and subtype, which is how a client finds a device-specific region.
RegionInfoCapType = Struct(
    "id" / Int16ul,
    "version" / Int16ul,
    "next" / Int32ul,
    "type" / Int32ul,
    "subtype" / Int32ul,
)
REGION_INFO_CAP_TYPE = 2
REGION_INFO_CAP_TYPE_VERSION = 1

#: DEVICE_GET_IRQ_INFO request and reply (struct vfio_irq_info, 16 bytes).
IrqInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "count" / Int32ul,
)

#: DEVICE_SET_IRQS request (struct vfio_irq_set, 20 bytes).  Eventfds travel
#: only as SCM_RIGHTS; DATA_BOOL carries `count` bool bytes after the struct
#: (QEMU never sends DATA_BOOL, docs/vfio-user-qemu.md §3.5).
SetIrqs = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "start" / Int32ul,
    "count" / Int32ul,
    "data" / GreedyBytes,
)

#: REGION_READ request and REGION_WRITE reply (16 bytes).
RegionAccess = Struct(
    "offset" / Int64ul,
    "region" / Int32ul,
    "count" / Int32ul,
)

#: REGION_READ reply and REGION_WRITE request: the access plus `count` bytes.
RegionAccessData = Struct(
    "offset" / Int64ul,
    "region" / Int32ul,
    "count" / Int32ul,
    "data" / Bytes(this.count),
)

#: DMA_READ request (server -> client).  QEMU's VFIOUserDMARW is
#: {hdr; u64 offset; u32 count; char data[]} with sizeof 32 and requires
#: size >= 32 (docs/vfio-user-qemu.md §4), so the request is padded
#: to 32 bytes.  With count < 2**32 this is also byte-identical to the spec's
#: {u64 addr; u64 count}.
DmaReadRequest = Struct(
    "offset" / Int64ul,
    "count" / Int32ul,
    Padding(4),
)

#: DMA_WRITE request and DMA_READ reply in QEMU's layout: count is a u32 at
#: absolute byte 24, data starts at absolute byte 28, and the message is
#: 32 + count bytes long (4 trailing zero bytes).  NOT the spec layout, which
#: has a u64 count and data at byte 32 (docs/vfio-user-qemu.md §4).
DmaData = Struct(
    "offset" / Int64ul,
    "count" / Int32ul,
    "data" / Bytes(this.count),
    Padding(4),
)

#: One REGION_WRITE_MULTI entry: at most 8 data bytes, always 24 bytes long.
WriteMultiEntry = Struct(
    "offset" / Int64ul,
    "region" / Int32ul,
    "count" / Int32ul,
    "data" / Bytes(8),
)

#: REGION_WRITE_MULTI request; always sent NO_REPLY (docs/vfio-user-qemu.md §3.9).
WriteMulti = Struct(
    "wr_cnt" / Int64ul,
    "entries" / Array(this.wr_cnt, WriteMultiEntry),
)



# --- fast codecs derived from the declarations ------------------------------


class FixedCodec:
    """The leading fixed-size fields of a declaration as one `struct.Struct`.

    The layout is *derived* from the construct declaration above (each
    little-endian FormatField becomes its struct code, each zero Padding
    becomes pad bytes), so the wire format is still declared once; this is
    only a faster way to run it.  construct's interpreter costs ~10 us per
    message on a small VM, `struct` well under 1 us, which matters on the
    REGION_READ/REGION_WRITE hot path.  With `prefix=True` the derivation
    stops at the first variable-size field (e.g. RegionAccessData.data), whose
    bytes the caller appends or slices off.

    `unpack` returns the field values as a tuple in declaration order; errors
    are raised as construct exceptions so callers keep catching ConstructError.
    `struct` is the derived `struct.Struct` itself, for callers that have
    already checked the length and ranges (no Python-level frame per call).

    Several declarations give their concatenation (a header followed by a
    payload struct), so one call packs or unpacks a whole message head.
    """

    __slots__ = ("names", "size", "struct")

    def __init__(self, *decls: Any, prefix: bool = False) -> None:
        fmt = "<"
        names: list[str] = []
        subcons = [sub for decl in decls for sub in decl.subcons]
        for sub in subcons:
            con = sub.subcon if isinstance(sub, Renamed) else sub
            if isinstance(con, FormatField) and con.fmtstr[0] == "<":
                fmt += con.fmtstr[1:]
                names.append(sub.name)
            elif (isinstance(con, Padded) and con.subcon is Pass and isinstance(con.length, int)
                  and con.pattern == b"\0"):
                fmt += f"{con.length}x"
            elif prefix:
                break
            else:
                raise TypeError(f"{sub!r} has no fixed little-endian struct layout")
        self.struct = _struct.Struct(fmt)
        self.names = tuple(names)
        self.size = self.struct.size
        if not prefix and self.size != sum(decl.sizeof() for decl in decls):
            raise TypeError(f"derived layout {fmt} disagrees with the declaration")

    def unpack(self, data: bytes) -> tuple[int, ...]:
        """Fields from the first `size` bytes of `data` (more bytes are ignored)."""
        try:
            return self.struct.unpack_from(data)
        except _struct.error as exc:
            raise StreamError(f"need {self.size} bytes, have {len(data)}: {exc}") from None

    def pack(self, *values: int) -> bytes:
        """The fields' bytes, values in declaration order."""
        try:
            return self.struct.pack(*values)
        except _struct.error as exc:
            raise FormatFieldError(f"cannot build {self.names}={values}: {exc}") from None


HEADER = FixedCodec(Header)
REGION_ACCESS = FixedCodec(RegionAccess)
#: The fixed part of RegionAccessData (identical to RegionAccess), data follows.
REGION_ACCESS_DATA = FixedCodec(RegionAccessData, prefix=True)
#: Header + RegionAccess: a whole REGION_READ request, the head of a REGION_READ
#: reply (data follows) and a whole REGION_WRITE reply, in one struct call.
REGION_MESSAGE = FixedCodec(Header, RegionAccess)

WRITE_MULTI_ENTRY_SIZE = WriteMultiEntry.sizeof()
WRITE_MULTI_MAX_DATA = 8

# Fixed sizes, checked against the payload length before parsing.
DMA_MAP_SIZE = DmaMap.sizeof()  # 32
DMA_UNMAP_SIZE = DmaUnmap.sizeof()  # 24
DEVICE_INFO_SIZE = DeviceInfo.sizeof()  # 16
REGION_INFO_SIZE = RegionInfo.sizeof()  # 32
REGION_INFO_CAP_TYPE_SIZE = RegionInfoCapType.sizeof()  # 16
IRQ_INFO_SIZE = IrqInfo.sizeof()  # 16
SET_IRQS_SIZE = 20
REGION_ACCESS_SIZE = RegionAccess.sizeof()  # 16
DMA_RW_FIXED = 16  # offset u64 + count u32 + 4 bytes (trailing pad / sizeof)


# --- helpers ----------------------------------------------------------------


def build_message(
    msg_id: int,
    cmd: int,
    payload: bytes = b"",
    *,
    flags: int = 0,
    error: int = 0,
) -> bytes:
    """Header + payload, with the size field filled in."""
    return HEADER.pack(msg_id & 0xFFFF, cmd, HEADER_SIZE + len(payload), flags, error) + payload


def build_error_reply(msg_id: int, cmd: int, errno_value: int) -> bytes:
    """Error reply: flags REPLY|ERROR (0x21), positive errno, header only (spec "Header")."""
    return build_message(
        msg_id, cmd, flags=MsgType.REPLY | HeaderFlags.ERROR, error=errno_value
    )


def parse_header(data: bytes) -> Container:
    """Parse the first 16 bytes of a message."""
    result: Container = Header.parse(data[:HEADER_SIZE])
    return result


def unpack_header(data: bytes) -> tuple[int, int, int, int, int]:
    """(id, cmd, size, flags, error) of the first 16 bytes of a message."""
    return cast(tuple[int, int, int, int, int], HEADER.unpack(data))


#: Plain-int copies of the flag bits for the hot path (IntFlag operators are
#: Python-level calls).
TYPE_MASK = int(HeaderFlags.TYPE_MASK)
NO_REPLY = int(HeaderFlags.NO_REPLY)
ERROR = int(HeaderFlags.ERROR)
REQUEST = int(MsgType.REQUEST)
REPLY = int(MsgType.REPLY)


def msg_type(flags: int) -> int:
    return flags & TYPE_MASK


def build(struct: Any, **fields: Any) -> bytes:
    """Typed wrapper around `Struct.build` for mypy --strict callers."""
    return bytes(struct.build(fields))


def parse(struct: Any, data: bytes) -> Container:
    """Typed wrapper around `Struct.parse` for mypy --strict callers."""
    result: Container = struct.parse(data)
    return result


def command_name(cmd: int) -> str:
    try:
        return Command(cmd).name
    except ValueError:
        return f"cmd#{cmd}"
