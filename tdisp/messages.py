"""TDISP wire formats (PCIe 6.2 §11.3; libspdm pci_tdisp.h).

A TDISP message (what follows the ProtocolID byte 0x01 in the VDM payload) is a
16-byte header

    TDISPVersion u8 (0x10) | MessageType u8 | reserved u16 | INTERFACE_ID (FUNCTION_ID
    u32, reserved u64)

followed by a body declared below, once per message, for both parse and build.
Every message is a frozen dataclass with `interface_id` first; `encode()` gives the
TDISP bytes, `encode_vdm()` prepends the ProtocolID, `decode()` / `decode_vdm()` parse
any message and dispatch on MessageType.  Parsing is strict: trailing bytes or a short
body raise `MalformedMessage`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from construct import (
    Bytes,
    ConstructError,
    Default,
    GreedyBytes,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Prefixed,
    PrefixedArray,
    Struct,
    Terminated,
)

from tdisp.codes import (
    NONCE_SIZE,
    TDISP_VERSION_10,
    RequestCode,
    ResponseCode,
    error_name,
)
from tdisp.device_interface import InterfaceId
from tdisp.errors import MalformedMessage, TdispErrorResponse, UnexpectedResponse
from tdisp.vendor_defined import ProtocolId

HEADER_SIZE = 16

Header = Struct(
    "version" / Int8ul,
    "message_type" / Int8ul,
    "reserved" / Default(Int16ul, 0),
    "function_id" / Int32ul,
    "reserved_id" / Default(Int64ul, 0),
)

MmioRangeStruct = Struct(
    "first_page" / Int64ul,  # byte address of the first 4K page, MMIO_REPORTING_OFFSET added
    "number_of_pages" / Int32ul,
    "range_attributes" / Int16ul,
    "range_id" / Int16ul,
)
MMIO_RANGE_SIZE = 16


@dataclass(frozen=True)
class MmioRange:
    first_page: int
    number_of_pages: int
    range_attributes: int
    range_id: int


_EMPTY = Struct(Terminated)

T = TypeVar("T", bound="TdispMessage")


@dataclass(frozen=True)
class TdispMessage:
    """Base: header handling and the generic field <-> construct mapping."""

    interface_id: InterfaceId
    code: ClassVar[int]
    body: ClassVar[Any] = _EMPTY
    version: ClassVar[int] = TDISP_VERSION_10

    def _body_values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "interface_id":
                continue
            value = getattr(self, f.name)
            if isinstance(value, MmioRange):
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def _from_body(cls: type[T], interface_id: InterfaceId, parsed: Any) -> T:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "interface_id":
                continue
            value = parsed[f.name]
            if f.name == "mmio_range":
                value = MmioRange(*(int(value[g.name]) for g in dataclasses.fields(MmioRange)))
            elif isinstance(value, list):
                value = tuple(int(v) for v in value)
            elif isinstance(value, bytes | bytearray):
                value = bytes(value)
            else:
                value = int(value)
            kwargs[f.name] = value
        return cls(interface_id, **kwargs)

    def encode(self, version: int | None = None) -> bytes:
        head: bytes = Header.build(
            {
                "version": self.version if version is None else version,
                "message_type": self.code,
                "function_id": self.interface_id.function_id,
                "reserved_id": self.interface_id.reserved,
            }
        )
        body: bytes = self.body.build(self._body_values())
        return head + body

    def encode_vdm(self) -> bytes:
        return bytes([ProtocolId.TDISP]) + self.encode()


# ---- requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GetTdispVersion(TdispMessage):
    code: ClassVar[int] = RequestCode.GET_TDISP_VERSION


@dataclass(frozen=True)
class GetTdispCapabilities(TdispMessage):
    tsm_caps: int = 0
    code: ClassVar[int] = RequestCode.GET_TDISP_CAPABILITIES
    body: ClassVar[Any] = Struct("tsm_caps" / Int32ul, Terminated)


@dataclass(frozen=True)
class LockInterfaceRequest(TdispMessage):
    flags: int = 0
    default_stream_id: int = 0
    reserved: int = 0
    mmio_reporting_offset: int = 0
    bind_p2p_address_mask: int = 0
    code: ClassVar[int] = RequestCode.LOCK_INTERFACE_REQUEST
    body: ClassVar[Any] = Struct(
        "flags" / Int16ul,
        "default_stream_id" / Int8ul,
        "reserved" / Int8ul,
        "mmio_reporting_offset" / Int64ul,
        "bind_p2p_address_mask" / Int64ul,
        Terminated,
    )


@dataclass(frozen=True)
class GetDeviceInterfaceReport(TdispMessage):
    offset: int = 0
    length: int = 0
    code: ClassVar[int] = RequestCode.GET_DEVICE_INTERFACE_REPORT
    body: ClassVar[Any] = Struct("offset" / Int16ul, "length" / Int16ul, Terminated)


@dataclass(frozen=True)
class GetDeviceInterfaceState(TdispMessage):
    code: ClassVar[int] = RequestCode.GET_DEVICE_INTERFACE_STATE


@dataclass(frozen=True)
class StartInterfaceRequest(TdispMessage):
    nonce: bytes = field(default=bytes(NONCE_SIZE))
    code: ClassVar[int] = RequestCode.START_INTERFACE_REQUEST
    body: ClassVar[Any] = Struct("nonce" / Bytes(NONCE_SIZE), Terminated)


@dataclass(frozen=True)
class StopInterfaceRequest(TdispMessage):
    code: ClassVar[int] = RequestCode.STOP_INTERFACE_REQUEST


@dataclass(frozen=True)
class BindP2pStreamRequest(TdispMessage):
    p2p_stream_id: int = 0
    stream_config: int = 0  # libspdm pci_tdisp.h; XT enable in bit 0 (TDISP 1.1), else 0
    code: ClassVar[int] = RequestCode.BIND_P2P_STREAM_REQUEST
    body: ClassVar[Any] = Struct("p2p_stream_id" / Int8ul, "stream_config" / Int8ul, Terminated)


@dataclass(frozen=True)
class UnbindP2pStreamRequest(TdispMessage):
    p2p_stream_id: int = 0
    code: ClassVar[int] = RequestCode.UNBIND_P2P_STREAM_REQUEST
    body: ClassVar[Any] = Struct("p2p_stream_id" / Int8ul, Terminated)


@dataclass(frozen=True)
class SetMmioAttributeRequest(TdispMessage):
    mmio_range: MmioRange = MmioRange(0, 0, 0, 0)
    code: ClassVar[int] = RequestCode.SET_MMIO_ATTRIBUTE_REQUEST
    body: ClassVar[Any] = Struct("mmio_range" / MmioRangeStruct, Terminated)


_VdmBody = Struct(
    "registry_id" / Int8ul,
    "vendor_id" / Prefixed(Int8ul, GreedyBytes),
    "vendor_data" / GreedyBytes,
)


@dataclass(frozen=True)
class VdmRequest(TdispMessage):
    registry_id: int = 0
    vendor_id: bytes = b""
    vendor_data: bytes = b""
    code: ClassVar[int] = RequestCode.VDM_REQUEST
    body: ClassVar[Any] = _VdmBody


# ---- responses --------------------------------------------------------------------------


@dataclass(frozen=True)
class TdispVersion(TdispMessage):
    versions: tuple[int, ...] = (TDISP_VERSION_10,)
    code: ClassVar[int] = ResponseCode.TDISP_VERSION
    body: ClassVar[Any] = Struct("versions" / PrefixedArray(Int8ul, Int8ul), Terminated)


@dataclass(frozen=True)
class TdispCapabilities(TdispMessage):
    dsm_caps: int = 0
    req_msgs_supported: bytes = bytes(16)
    lock_interface_flags_supported: int = 0
    reserved: bytes = bytes(3)
    dev_addr_width: int = 0
    num_req_this: int = 0
    num_req_all: int = 0
    code: ClassVar[int] = ResponseCode.TDISP_CAPABILITIES
    body: ClassVar[Any] = Struct(
        "dsm_caps" / Int32ul,
        "req_msgs_supported" / Bytes(16),
        "lock_interface_flags_supported" / Int16ul,
        "reserved" / Bytes(3),
        "dev_addr_width" / Int8ul,
        "num_req_this" / Int8ul,
        "num_req_all" / Int8ul,
        Terminated,
    )


@dataclass(frozen=True)
class LockInterfaceResponse(TdispMessage):
    nonce: bytes = field(default=bytes(NONCE_SIZE))
    code: ClassVar[int] = ResponseCode.LOCK_INTERFACE_RESPONSE
    body: ClassVar[Any] = Struct("nonce" / Bytes(NONCE_SIZE), Terminated)


@dataclass(frozen=True)
class DeviceInterfaceReport(TdispMessage):
    remainder_length: int = 0
    portion: bytes = b""
    code: ClassVar[int] = ResponseCode.DEVICE_INTERFACE_REPORT
    # PORTION_LENGTH u16 | REMAINDER_LENGTH u16 | REPORT_BYTES[PORTION_LENGTH]  (§11.3.10)
    body: ClassVar[Any] = Struct(
        "portion_length" / Int16ul,
        "remainder_length" / Int16ul,
        "portion" / Bytes(lambda ctx: ctx.portion_length),
        Terminated,
    )

    def _body_values(self) -> dict[str, Any]:
        values = super()._body_values()
        values["portion_length"] = len(self.portion)
        return values


@dataclass(frozen=True)
class DeviceInterfaceState(TdispMessage):
    state: int = 0
    code: ClassVar[int] = ResponseCode.DEVICE_INTERFACE_STATE
    body: ClassVar[Any] = Struct("state" / Int8ul, Terminated)


@dataclass(frozen=True)
class StartInterfaceResponse(TdispMessage):
    code: ClassVar[int] = ResponseCode.START_INTERFACE_RESPONSE


@dataclass(frozen=True)
class StopInterfaceResponse(TdispMessage):
    code: ClassVar[int] = ResponseCode.STOP_INTERFACE_RESPONSE


@dataclass(frozen=True)
class BindP2pStreamResponse(TdispMessage):
    code: ClassVar[int] = ResponseCode.BIND_P2P_STREAM_RESPONSE


@dataclass(frozen=True)
class UnbindP2pStreamResponse(TdispMessage):
    code: ClassVar[int] = ResponseCode.UNBIND_P2P_STREAM_RESPONSE


@dataclass(frozen=True)
class SetMmioAttributeResponse(TdispMessage):
    code: ClassVar[int] = ResponseCode.SET_MMIO_ATTRIBUTE_RESPONSE


@dataclass(frozen=True)
class VdmResponse(TdispMessage):
    registry_id: int = 0
    vendor_id: bytes = b""
    vendor_data: bytes = b""
    code: ClassVar[int] = ResponseCode.VDM_RESPONSE
    body: ClassVar[Any] = _VdmBody


ExtendedErrorData = Struct(
    # §11.3.17: present for VENDOR_SPECIFIC_ERROR only.
    "registry_id" / Int8ul,
    "vendor_id" / Prefixed(Int8ul, GreedyBytes),
    "vendor_error_data" / GreedyBytes,
)


@dataclass(frozen=True)
class TdispError(TdispMessage):
    error_code: int = 0
    error_data: int = 0
    extended_error_data: bytes = b""
    code: ClassVar[int] = ResponseCode.TDISP_ERROR
    body: ClassVar[Any] = Struct(
        "error_code" / Int32ul,
        "error_data" / Int32ul,
        "extended_error_data" / GreedyBytes,
    )

    @property
    def name(self) -> str:
        return error_name(self.error_code)

    def to_exception(self) -> TdispErrorResponse:
        return TdispErrorResponse(
            self.error_code, self.name, self.error_data, self.extended_error_data
        )


def vendor_extended_error(registry_id: int, vendor_id: bytes, data: bytes) -> bytes:
    out: bytes = ExtendedErrorData.build(
        {"registry_id": registry_id, "vendor_id": vendor_id, "vendor_error_data": data}
    )
    return out


REQUESTS: dict[int, type[TdispMessage]] = {
    cls.code: cls
    for cls in (
        GetTdispVersion,
        GetTdispCapabilities,
        LockInterfaceRequest,
        GetDeviceInterfaceReport,
        GetDeviceInterfaceState,
        StartInterfaceRequest,
        StopInterfaceRequest,
        BindP2pStreamRequest,
        UnbindP2pStreamRequest,
        SetMmioAttributeRequest,
        VdmRequest,
    )
}
RESPONSES: dict[int, type[TdispMessage]] = {
    cls.code: cls
    for cls in (
        TdispVersion,
        TdispCapabilities,
        LockInterfaceResponse,
        DeviceInterfaceReport,
        DeviceInterfaceState,
        StartInterfaceResponse,
        StopInterfaceResponse,
        BindP2pStreamResponse,
        UnbindP2pStreamResponse,
        SetMmioAttributeResponse,
        VdmResponse,
        TdispError,
    )
}
RESPONSE_FOR: dict[int, int] = {req: req - 0x80 for req in REQUESTS}  # §11.3: rsp = req - 80h


@dataclass(frozen=True)
class ParsedHeader:
    version: int
    message_type: int
    interface_id: InterfaceId


def decode_header(data: bytes) -> ParsedHeader:
    if len(data) < HEADER_SIZE:
        raise MalformedMessage(f"TDISP message of {len(data)} bytes, header needs {HEADER_SIZE}")
    h = Header.parse(data[:HEADER_SIZE])
    return ParsedHeader(
        int(h.version), int(h.message_type), InterfaceId(int(h.function_id), int(h.reserved_id))
    )


def decode_body(cls: type[T], header: ParsedHeader, data: bytes) -> T:
    try:
        parsed = cls.body.parse(data[HEADER_SIZE:])
    except ConstructError as exc:
        raise MalformedMessage(f"{cls.__name__}: {exc}") from exc
    return cls._from_body(header.interface_id, parsed)


def decode(data: bytes) -> TdispMessage:
    """Parse any TDISP request or response (no ProtocolID byte)."""
    header = decode_header(data)
    if header.version != TDISP_VERSION_10:
        raise MalformedMessage(f"TDISP version 0x{header.version:02x}")
    cls = REQUESTS.get(header.message_type) or RESPONSES.get(header.message_type)
    if cls is None:
        raise MalformedMessage(f"unknown TDISP message type 0x{header.message_type:02x}")
    return decode_body(cls, header, data)


def decode_vdm(payload: bytes) -> TdispMessage:
    if not payload or payload[0] != ProtocolId.TDISP:
        raise MalformedMessage("not a TDISP VDM payload")
    return decode(payload[1:])


def expect(payload: bytes, cls: type[T], interface_id: InterfaceId | None = None) -> T:
    """Requester side: parse a TDISP VDM response that must be `cls`.

    TDISP_ERROR becomes `TdispErrorResponse` (with the decoded error name); any other
    type, or a response for another INTERFACE_ID, is `UnexpectedResponse`.
    """
    msg = decode_vdm(payload)
    if isinstance(msg, TdispError):
        raise msg.to_exception()
    if not isinstance(msg, cls):
        raise UnexpectedResponse(f"expected {cls.__name__}, got {type(msg).__name__}")
    if interface_id is not None and not msg.interface_id.matches(interface_id):
        raise UnexpectedResponse(
            f"response for interface {msg.interface_id}, expected {interface_id}"
        )
    return msg
