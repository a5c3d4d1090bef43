"""Classic pcap output, as spdm-emu's `--pcap` writes it (docs/protocols.md §10).

Global header (24 bytes) then one record per packet, all in the writer's byte order
(little-endian here; readers recognise it from the magic 0xa1b2c3d4 read back as
d4 c3 b2 a1):

  magic u32 = 0xa1b2c3d4 (microsecond timestamps) | version 2.4 | thiszone i32 = 0 |
  sigfigs u32 = 0 | snaplen u32 = 65536 | network u32 = link type
  record: ts_sec u32 | ts_usec u32 | incl_len u32 | orig_len u32 | data[incl_len]

Link types are libspdm's (os_stub/include/industry_standard/link_type_ex.h), not
registered with tcpdump.org (libpcap PR #990 was closed): 291 MCTP, 292 PCI DOE.  tcpdump.org
has since given 292 to ZBOSS NCP, which is what Wireshark opens such a file as
(docs/protocols.md §10).  With
292 each record is one whole DOE object, 8-byte header included; secured objects stay
encrypted, so DMTF's spdm_dump decodes them given `--dhe_secret` / `--psk`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from construct import (
    Const,
    ConstructError,
    Int16ub,
    Int16ul,
    Int32sb,
    Int32sl,
    Int32ub,
    Int32ul,
    Int64ul,
    Struct,
)

PCAP_MAGIC = 0xA1B2C3D4
# The first four bytes of a capture file: classic pcap (either byte order, micro- or
# nanosecond timestamps) and pcapng's Section Header Block.
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
SNAPLEN = 65536
LINKTYPE_MCTP = 291
LINKTYPE_PCI_DOE = 292

PcapHeader = Struct(
    "magic" / Const(PCAP_MAGIC, Int32ul),
    "version_major" / Const(2, Int16ul),
    "version_minor" / Const(4, Int16ul),
    "thiszone" / Const(0, Int32sl),
    "sigfigs" / Const(0, Int32ul),
    "snaplen" / Int32ul,
    "network" / Int32ul,
)

PcapRecordHeader = Struct(
    "ts_sec" / Int32ul,
    "ts_usec" / Int32ul,
    "incl_len" / Int32ul,
    "orig_len" / Int32ul,
)
# The same two headers as another writer may have written them: big-endian, any magic.
_READ_HEADER = {
    "<": Struct("magic" / Int32ul, "version_major" / Int16ul, "version_minor" / Int16ul,
                "thiszone" / Int32sl, "sigfigs" / Int32ul, "snaplen" / Int32ul,
                "network" / Int32ul),
    ">": Struct("magic" / Int32ub, "version_major" / Int16ub, "version_minor" / Int16ub,
                "thiszone" / Int32sb, "sigfigs" / Int32ub, "snaplen" / Int32ub,
                "network" / Int32ub),
}
_READ_RECORD = {
    "<": PcapRecordHeader,
    ">": Struct("ts_sec" / Int32ub, "ts_usec" / Int32ub, "incl_len" / Int32ub,
                "orig_len" / Int32ub),
}


class PcapFormatError(ValueError):
    """Not a classic pcap file, or a truncated one."""


class PcapReader:
    """Reads a classic pcap file: `link_type`, then (time, bytes) per record."""

    def __init__(self, f: BinaryIO) -> None:
        head = f.read(PcapHeader.sizeof())
        kind = PCAP_MAGICS.get(head[:4])
        if kind is None:
            raise PcapFormatError("pcapng, not classic pcap" if head[:4] == PCAPNG_MAGIC
                                  else "not a pcap file")
        if len(head) < PcapHeader.sizeof():
            raise PcapFormatError("truncated pcap header")
        self._order, self._unit = kind
        self.f = f
        self.link_type = int(_READ_HEADER[self._order].parse(head).network)

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        record = _READ_RECORD[self._order]
        while True:
            head = self.f.read(record.sizeof())
            if not head:
                return
            try:
                r = record.parse(head)
            except ConstructError:
                raise PcapFormatError("truncated record header at the end") from None
            data = self.f.read(r.incl_len)
            if len(data) < r.incl_len:
                raise PcapFormatError("truncated record at the end")
            yield r.ts_sec + r.ts_usec * self._unit, data


class PcapWriter:
    """Appends records to an open binary file; flushes each (a trace of a process that
    gets killed must still be readable up to its last exchange)."""

    def __init__(self, out: BinaryIO, link_type: int = LINKTYPE_PCI_DOE) -> None:
        self.out = out
        self.link_type = link_type
        self.records = 0
        out.write(PcapHeader.build({"snaplen": SNAPLEN, "network": link_type}))
        out.flush()

    def write(self, data: bytes, t: float) -> None:
        usec_total = round(t * 1_000_000)
        sec, usec = divmod(usec_total, 1_000_000)
        kept = data[:SNAPLEN]
        self.out.write(PcapRecordHeader.build(
            {"ts_sec": sec, "ts_usec": usec, "incl_len": len(kept), "orig_len": len(data)}))
        self.out.write(kept)
        self.out.flush()
        self.records += 1

    def close(self) -> None:
        self.out.close()


# ---- pcapng, for the decrypted capture ----------------------------------------------------
#
# pcapng (draft-ietf-opsawg-pcapng): a Section Header Block, one Interface Description
# Block (the link type), then one Enhanced Packet Block per record.  It is used where a
# record needs a word of its own: the capture whose secured records are written
# decrypted marks each such record with a comment, so a reader never has to guess.

SHB_TYPE, IDB_TYPE, EPB_TYPE = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT, OPT_IF_NAME, OPT_SHB_USERAPPL = 0, 1, 2, 4

PcapngOption = Struct("code" / Int16ul, "length" / Int16ul)
PcapngBlockHeader = Struct("type" / Int32ul, "total_length" / Int32ul)
PcapngShbBody = Struct(
    "byte_order_magic" / Const(BYTE_ORDER_MAGIC, Int32ul),
    "major" / Const(1, Int16ul),
    "minor" / Const(0, Int16ul),
    "section_length" / Const(0xFFFFFFFFFFFFFFFF, Int64ul),
)
PcapngIdbBody = Struct("link_type" / Int16ul, "reserved" / Const(0, Int16ul),
                       "snaplen" / Int32ul)
PcapngEpbBody = Struct("interface_id" / Int32ul, "ts_high" / Int32ul, "ts_low" / Int32ul,
                       "captured_length" / Int32ul, "original_length" / Int32ul)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _options(*options: tuple[int, bytes]) -> bytes:
    out = b"".join(PcapngOption.build({"code": code, "length": len(value)}) + _pad4(value)
                   for code, value in options)
    return out + PcapngOption.build({"code": OPT_END, "length": 0}) if options else b""


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)  # type, total length, body, total length again
    head: bytes = PcapngBlockHeader.build({"type": block_type, "total_length": total})
    tail: bytes = Int32ul.build(total)
    return head + body + tail


class PcapngWriter:
    """One section, one interface of `link_type` (microsecond time stamps, the default);
    `write(data, t, comment)` appends an Enhanced Packet Block, flushed."""

    def __init__(self, out: BinaryIO, link_type: int = LINKTYPE_PCI_DOE, *,
                 interface: str = "", application: str = "vdev") -> None:
        self.out = out
        self.records = 0
        out.write(_block(SHB_TYPE, PcapngShbBody.build({}) + _options(
            (OPT_SHB_USERAPPL, application.encode()))))
        out.write(_block(IDB_TYPE, PcapngIdbBody.build(
            {"link_type": link_type, "snaplen": SNAPLEN})
            + _options(*([(OPT_IF_NAME, interface.encode())] if interface else []))))
        out.flush()

    def write(self, data: bytes, t: float, comment: str = "") -> None:
        usec = round(t * 1_000_000)
        kept = data[:SNAPLEN]
        body = PcapngEpbBody.build({"interface_id": 0, "ts_high": usec >> 32,
                                    "ts_low": usec & 0xFFFFFFFF, "captured_length": len(kept),
                                    "original_length": len(data)})
        body += _pad4(kept) + _options(*([(OPT_COMMENT, comment.encode())] if comment else []))
        self.out.write(_block(EPB_TYPE, body))
        self.out.flush()
        self.records += 1

    def close(self) -> None:
        self.out.close()


class PcapngReader:
    """Reads what PcapngWriter writes (little-endian sections, Enhanced Packet Blocks on
    one interface): `link_type`, then (time, bytes, comment) per packet."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.link_type: int | None = None
        self._unit = 1e-6
        self._pending: list[tuple[int, bytes]] = []
        while self.link_type is None:
            block = self._block()
            if block is None:
                raise PcapFormatError("pcapng without an interface")
            self._pending.append(block)
            if block[0] == IDB_TYPE:
                self.link_type = int(PcapngIdbBody.parse(block[1]).link_type)

    def _block(self) -> tuple[int, bytes] | None:
        head = self.f.read(PcapngBlockHeader.sizeof())
        if not head:
            return None
        try:
            h = PcapngBlockHeader.parse(head)
        except ConstructError:
            raise PcapFormatError("truncated pcapng block header") from None
        rest = self.f.read(h.total_length - PcapngBlockHeader.sizeof())
        if len(rest) < h.total_length - PcapngBlockHeader.sizeof() or len(rest) < 4:
            raise PcapFormatError("truncated pcapng block at the end")
        if h.type == SHB_TYPE and Int32ul.parse(rest[:4]) != BYTE_ORDER_MAGIC:
            raise PcapFormatError("big-endian pcapng: only what vdev writes is read here")
        return int(h.type), rest[:-4]

    def __iter__(self) -> Iterator[tuple[float, bytes, str]]:
        while True:
            block = self._pending.pop(0) if self._pending else self._block()
            if block is None:
                return
            kind, body = block
            if kind != EPB_TYPE:
                continue
            e = PcapngEpbBody.parse(body)
            start = PcapngEpbBody.sizeof()
            data = body[start : start + e.captured_length]
            options = body[start + e.captured_length + (-e.captured_length % 4) :]
            yield ((e.ts_high << 32 | e.ts_low) * self._unit, data,
                   _option(options, OPT_COMMENT))


def _option(options: bytes, code: int) -> str:
    at = 0
    while at + 4 <= len(options):
        o = PcapngOption.parse(options[at : at + 4])
        if o.code == OPT_END:
            break
        if o.code == code:
            return options[at + 4 : at + 4 + o.length].decode(errors="replace")
        at += 4 + o.length + (-o.length % 4)
    return ""
