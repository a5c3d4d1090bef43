"""IDE_KM wire formats (PCIe 6.2 §6.33.3; libspdm pci_idekm.h).

Every object here *includes* the ProtocolID byte (0x00), as the PCIe figures draw
them, so sizes match the spec: KEY_PROG is 48 bytes, KP_ACK and the K_SET_* objects 8.

    QUERY        pid | id 0 | rsvd | port
    QUERY_RESP   pid | id 1 | rsvd | port | dev_func | bus | segment | max_port
                 | IDE capability registers (DWORDs: IDE Cap, IDE Ctl, link blocks,
                   selective blocks), as the port's IDE Extended Capability holds them
    KEY_PROG     pid | id 2 | rsvd[2] | stream | rsvd | key_sub_stream | port
                 | Key (8 DW) | IFV (2 DW)
    KP_ACK       pid | id 3 | rsvd[2] | stream | status | key_sub_stream | port
    K_SET_GO     pid | id 4 | rsvd[2] | stream | rsvd | key_sub_stream | port
    K_SET_STOP   id 5, K_GOSTOP_ACK id 6: same layout as K_SET_GO

key_sub_stream: bit 0 key set (K0/K1), bit 1 direction (0 RX, 1 TX), bits 3:2
reserved, bits 7:4 sub-stream (0 PR, 1 NPR, 2 CPL).

Key byte order (tee-io-validator doc/key_byte_order.md): the API takes the AES-256 key
in natural AES-GCM order (byte 0 most significant, as Appendix L and `cryptography`
use it) and the IFV as IV bytes 4..11 in the same order.  On the wire the first DWORD
is Key_DW7 = key bytes 0..3 with byte 0 in bits 31:24; DWORDs are little-endian, so
every 4-byte group appears reversed.  The IFV likewise: IFV_DW1 (IV bytes 4..7) then
IFV_DW0 (IV bytes 8..11).  The PCIe initial IFV 0x0000000000000001 is therefore
`00 00 00 00 01 00 00 00` on the wire (libspdm: iv[0]=0, iv[1]=1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from construct import (
    Adapter,
    Bytes,
    Const,
    ConstructError,
    Default,
    GreedyRange,
    Int8ul,
    Int32ul,
    Struct,
    Terminated,
)

from tdisp.errors import MalformedMessage
from tdisp.vendor_defined import ProtocolId

KEY_SIZE = 32
IFV_SIZE = 8
INITIAL_IFV = (1).to_bytes(IFV_SIZE, "big")  # PCIe §6.33.5: the invocation field starts at 1


class ObjectId(enum.IntEnum):
    QUERY = 0x00
    QUERY_RESP = 0x01
    KEY_PROG = 0x02
    KP_ACK = 0x03
    K_SET_GO = 0x04
    K_SET_STOP = 0x05
    K_GOSTOP_ACK = 0x06


class KpAckStatus(enum.IntEnum):
    """KP_ACK Status (PCIe 6.2 §6.33.3, Table 6-xx)."""

    SUCCESS = 0x00
    INCORRECT_LENGTH = 0x01
    UNSUPPORTED_PORT_INDEX = 0x02
    UNSUPPORTED_VALUE = 0x03
    UNSPECIFIED_FAILURE = 0x04


class SubStream(enum.IntEnum):
    PR = 0
    NPR = 1
    CPL = 2


KEY_SET_MASK = 0x01
DIRECTION_TX = 0x02
KSS_RESERVED_MASK = 0x0C
SUB_STREAM_SHIFT = 4


def key_sub_stream(key_set: int, tx: bool, sub_stream: int) -> int:
    """Compose the key_sub_stream byte."""
    return (key_set & 1) | (DIRECTION_TX if tx else 0) | ((sub_stream & 0xF) << SUB_STREAM_SHIFT)


def _dword_swap(data: bytes) -> bytes:
    # Each 4-byte group reversed: natural (AES) order <-> little-endian DWORDs on the wire.
    return b"".join(data[i : i + 4][::-1] for i in range(0, len(data), 4))


class _DwordSwapped(Adapter):  # type: ignore[misc]
    def _decode(self, obj: bytes, context: Any, path: Any) -> bytes:
        return _dword_swap(obj)

    def _encode(self, obj: bytes, context: Any, path: Any) -> bytes:
        return _dword_swap(bytes(obj))


def _pid() -> Any:
    return "protocol_id" / Const(ProtocolId.IDE_KM, Int8ul)


QueryStruct = Struct(
    _pid(),
    "object_id" / Const(ObjectId.QUERY, Int8ul),
    "reserved" / Default(Int8ul, 0),
    "port_index" / Int8ul,
    Terminated,
)

QueryRespStruct = Struct(
    _pid(),
    "object_id" / Const(ObjectId.QUERY_RESP, Int8ul),
    "reserved" / Default(Int8ul, 0),
    "port_index" / Int8ul,
    "dev_func" / Int8ul,
    "bus" / Int8ul,
    "segment" / Int8ul,
    "max_port_index" / Int8ul,
    "registers" / GreedyRange(Int32ul),
    Terminated,
)

KeyProgStruct = Struct(
    _pid(),
    "object_id" / Const(ObjectId.KEY_PROG, Int8ul),
    "reserved0" / Default(Bytes(2), b"\x00\x00"),
    "stream_id" / Int8ul,
    "reserved1" / Default(Int8ul, 0),
    "key_sub_stream" / Int8ul,
    "port_index" / Int8ul,
    "key" / _DwordSwapped(Bytes(KEY_SIZE)),
    "ifv" / _DwordSwapped(Bytes(IFV_SIZE)),
    Terminated,
)
KEY_PROG_SIZE = 48
KEY_PROG_HEADER_SIZE = 8


def _ack_like(object_id: ObjectId, middle: str) -> Any:
    return Struct(
        _pid(),
        "object_id" / Const(object_id, Int8ul),
        "reserved0" / Default(Bytes(2), b"\x00\x00"),
        "stream_id" / Int8ul,
        middle / Default(Int8ul, 0),
        "key_sub_stream" / Int8ul,
        "port_index" / Int8ul,
        Terminated,
    )


KpAckStruct = _ack_like(ObjectId.KP_ACK, "status")
KSetGoStruct = _ack_like(ObjectId.K_SET_GO, "reserved1")
KSetStopStruct = _ack_like(ObjectId.K_SET_STOP, "reserved1")
KGoStopAckStruct = _ack_like(ObjectId.K_GOSTOP_ACK, "reserved1")
K_SET_SIZE = 8


def _parse(struct: Any, data: bytes, what: str) -> Any:
    try:
        return struct.parse(data)
    except ConstructError as exc:
        raise MalformedMessage(f"{what}: {exc}") from exc


@dataclass(frozen=True)
class KeySlot:
    """The addressing fields shared by KEY_PROG, KP_ACK and the K_SET_* objects."""

    stream_id: int
    key_sub_stream: int
    port_index: int

    @property
    def key_set(self) -> int:
        return self.key_sub_stream & KEY_SET_MASK

    @property
    def tx(self) -> bool:
        return bool(self.key_sub_stream & DIRECTION_TX)

    @property
    def sub_stream(self) -> int:
        return self.key_sub_stream >> SUB_STREAM_SHIFT

    @classmethod
    def of(cls, stream_id: int, key_set: int, tx: bool, sub_stream: int, port: int) -> KeySlot:
        return cls(stream_id, key_sub_stream(key_set, tx, sub_stream), port)

    def describe(self) -> str:
        name = SubStream(self.sub_stream).name if self.sub_stream <= 2 else str(self.sub_stream)
        return (
            f"port {self.port_index} stream {self.stream_id} K{self.key_set} "
            f"{'TX' if self.tx else 'RX'} {name}"
        )


@dataclass(frozen=True)
class Query:
    port_index: int
    object_id: ClassVar[ObjectId] = ObjectId.QUERY

    def build(self) -> bytes:
        out: bytes = QueryStruct.build({"port_index": self.port_index})
        return out

    @classmethod
    def parse(cls, data: bytes) -> Query:
        p = _parse(QueryStruct, data, "QUERY")
        return cls(int(p.port_index))


@dataclass(frozen=True)
class QueryResp:
    port_index: int
    dev_func: int
    bus: int
    segment: int
    max_port_index: int
    registers: tuple[int, ...] = field(default_factory=tuple)
    object_id: ClassVar[ObjectId] = ObjectId.QUERY_RESP

    def build(self) -> bytes:
        out: bytes = QueryRespStruct.build(
            {
                "port_index": self.port_index,
                "dev_func": self.dev_func,
                "bus": self.bus,
                "segment": self.segment,
                "max_port_index": self.max_port_index,
                "registers": list(self.registers),
            }
        )
        return out

    @classmethod
    def parse(cls, data: bytes) -> QueryResp:
        p = _parse(QueryRespStruct, data, "QUERY_RESP")
        return cls(
            int(p.port_index),
            int(p.dev_func),
            int(p.bus),
            int(p.segment),
            int(p.max_port_index),
            tuple(int(r) for r in p.registers),
        )


@dataclass(frozen=True)
class KeyProg:
    slot: KeySlot
    key: bytes = field(repr=False)  # natural AES-GCM byte order; never printed
    ifv: bytes = INITIAL_IFV
    object_id: ClassVar[ObjectId] = ObjectId.KEY_PROG

    def build(self) -> bytes:
        out: bytes = KeyProgStruct.build(
            {
                "stream_id": self.slot.stream_id,
                "key_sub_stream": self.slot.key_sub_stream,
                "port_index": self.slot.port_index,
                "key": self.key,
                "ifv": self.ifv,
            }
        )
        return out

    @classmethod
    def parse(cls, data: bytes) -> KeyProg:
        p = _parse(KeyProgStruct, data, "KEY_PROG")
        return cls(
            KeySlot(int(p.stream_id), int(p.key_sub_stream), int(p.port_index)),
            bytes(p.key),
            bytes(p.ifv),
        )


@dataclass(frozen=True)
class KpAck:
    slot: KeySlot
    status: int
    object_id: ClassVar[ObjectId] = ObjectId.KP_ACK

    def build(self) -> bytes:
        out: bytes = KpAckStruct.build(
            {
                "stream_id": self.slot.stream_id,
                "status": self.status,
                "key_sub_stream": self.slot.key_sub_stream,
                "port_index": self.slot.port_index,
            }
        )
        return out

    @classmethod
    def parse(cls, data: bytes) -> KpAck:
        p = _parse(KpAckStruct, data, "KP_ACK")
        return cls(KeySlot(int(p.stream_id), int(p.key_sub_stream), int(p.port_index)), p.status)


@dataclass(frozen=True)
class _KSlotMessage:
    slot: KeySlot
    struct: ClassVar[Any]
    name: ClassVar[str]

    def build(self) -> bytes:
        out: bytes = self.struct.build(
            {
                "stream_id": self.slot.stream_id,
                "key_sub_stream": self.slot.key_sub_stream,
                "port_index": self.slot.port_index,
            }
        )
        return out

    @classmethod
    def parse_slot(cls, data: bytes) -> KeySlot:
        p = _parse(cls.struct, data, cls.name)
        return KeySlot(int(p.stream_id), int(p.key_sub_stream), int(p.port_index))


@dataclass(frozen=True)
class KSetGo(_KSlotMessage):
    struct: ClassVar[Any] = KSetGoStruct
    name: ClassVar[str] = "K_SET_GO"
    object_id: ClassVar[ObjectId] = ObjectId.K_SET_GO

    @classmethod
    def parse(cls, data: bytes) -> KSetGo:
        return cls(cls.parse_slot(data))


@dataclass(frozen=True)
class KSetStop(_KSlotMessage):
    struct: ClassVar[Any] = KSetStopStruct
    name: ClassVar[str] = "K_SET_STOP"
    object_id: ClassVar[ObjectId] = ObjectId.K_SET_STOP

    @classmethod
    def parse(cls, data: bytes) -> KSetStop:
        return cls(cls.parse_slot(data))


@dataclass(frozen=True)
class KGoStopAck(_KSlotMessage):
    struct: ClassVar[Any] = KGoStopAckStruct
    name: ClassVar[str] = "K_GOSTOP_ACK"
    object_id: ClassVar[ObjectId] = ObjectId.K_GOSTOP_ACK

    @classmethod
    def parse(cls, data: bytes) -> KGoStopAck:
        return cls(cls.parse_slot(data))


IdeKmMessage = Query | QueryResp | KeyProg | KpAck | KSetGo | KSetStop | KGoStopAck

_BY_ID: dict[int, Any] = {
    ObjectId.QUERY: Query,
    ObjectId.QUERY_RESP: QueryResp,
    ObjectId.KEY_PROG: KeyProg,
    ObjectId.KP_ACK: KpAck,
    ObjectId.K_SET_GO: KSetGo,
    ObjectId.K_SET_STOP: KSetStop,
    ObjectId.K_GOSTOP_ACK: KGoStopAck,
}


def parse_idekm(data: bytes) -> IdeKmMessage:
    """Parse any IDE_KM object (ProtocolID byte included)."""
    if len(data) < 2 or data[0] != ProtocolId.IDE_KM:
        raise MalformedMessage("not an IDE_KM object")
    cls = _BY_ID.get(data[1])
    if cls is None:
        raise MalformedMessage(f"unknown IDE_KM object id 0x{data[1]:02x}")
    msg: IdeKmMessage = cls.parse(data)
    return msg
