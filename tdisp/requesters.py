"""Requester side of IDE_KM and TDISP for the platform TSM model.

Builders return VDM payloads (ProtocolID first) ready for
`vendor_defined.wrap_spdm_request`; parsers take the VDM payload of the response,
check that it answers the request (object/message type, INTERFACE_ID, echoed
addressing fields) and return typed dataclasses.  They raise:

    MalformedMessage      the bytes do not parse
    UnexpectedResponse    well-formed but not the answer to this request
    TdispErrorResponse    the device sent TDISP_ERROR (`.name` is the decoded code)
    IdeKmStatusError      KP_ACK with a non-zero status
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tdisp.codes import NONCE_SIZE, TDISP_VERSION_10, TdiState
from tdisp.device_interface import InterfaceId
from tdisp.errors import IdeKmStatusError, MalformedMessage, UnexpectedResponse
from tdisp.idekm_messages import (
    INITIAL_IFV,
    KeyProg,
    KeySlot,
    KGoStopAck,
    KpAck,
    KpAckStatus,
    KSetGo,
    KSetStop,
    Query,
    QueryResp,
    SubStream,
    parse_idekm,
)
from tdisp.interface_report import InterfaceReport
from tdisp.messages import (
    BindP2pStreamRequest,
    BindP2pStreamResponse,
    DeviceInterfaceReport,
    DeviceInterfaceState,
    GetDeviceInterfaceReport,
    GetDeviceInterfaceState,
    GetTdispCapabilities,
    GetTdispVersion,
    LockInterfaceRequest,
    LockInterfaceResponse,
    MmioRange,
    SetMmioAttributeRequest,
    SetMmioAttributeResponse,
    StartInterfaceRequest,
    StartInterfaceResponse,
    StopInterfaceRequest,
    StopInterfaceResponse,
    TdispCapabilities,
    TdispVersion,
    UnbindP2pStreamRequest,
    UnbindP2pStreamResponse,
    VdmRequest,
    VdmResponse,
    expect,
)

# ---- IDE_KM ------------------------------------------------------------------------------


def stream_slots(stream_id: int, key_set: int = 0, port_index: int = 0) -> list[KeySlot]:
    """The six KEY_PROG slots of a stream: {RX, TX} x {PR, NPR, CPL}."""
    return [
        KeySlot.of(stream_id, key_set, tx, int(sub), port_index)
        for tx in (False, True)
        for sub in SubStream
    ]


class IdeKmRequester:
    @staticmethod
    def query(port_index: int = 0) -> bytes:
        return Query(port_index).build()

    @staticmethod
    def parse_query_resp(payload: bytes, port_index: int = 0) -> QueryResp:
        msg = parse_idekm(payload)
        if not isinstance(msg, QueryResp):
            raise UnexpectedResponse(f"expected QUERY_RESP, got {type(msg).__name__}")
        if msg.port_index != port_index or msg.max_port_index < port_index:
            raise UnexpectedResponse(
                f"QUERY_RESP port {msg.port_index}/max {msg.max_port_index} for port {port_index}"
            )
        return msg

    @staticmethod
    def key_prog(slot: KeySlot, key: bytes, ifv: bytes = INITIAL_IFV) -> bytes:
        if len(key) != 32 or len(ifv) != 8:
            raise ValueError("IDE key is 32 bytes, IFV 8")
        return KeyProg(slot, key, ifv).build()

    @staticmethod
    def parse_kp_ack(payload: bytes, slot: KeySlot) -> KpAck:
        msg = parse_idekm(payload)
        if not isinstance(msg, KpAck):
            raise UnexpectedResponse(f"expected KP_ACK, got {type(msg).__name__}")
        if msg.slot != slot:
            raise UnexpectedResponse(f"KP_ACK for {msg.slot.describe()}, sent {slot.describe()}")
        if msg.status != KpAckStatus.SUCCESS:
            try:
                name = KpAckStatus(msg.status).name
            except ValueError:
                name = f"0x{msg.status:02x}"
            raise IdeKmStatusError(msg.status, name)
        return msg

    @staticmethod
    def k_set_go(slot: KeySlot) -> bytes:
        return KSetGo(slot).build()

    @staticmethod
    def k_set_stop(slot: KeySlot) -> bytes:
        return KSetStop(slot).build()

    @staticmethod
    def parse_gostop_ack(payload: bytes, slot: KeySlot) -> KGoStopAck:
        msg = parse_idekm(payload)
        if not isinstance(msg, KGoStopAck):
            raise UnexpectedResponse(f"expected K_GOSTOP_ACK, got {type(msg).__name__}")
        if msg.slot != slot:
            raise UnexpectedResponse(
                f"K_GOSTOP_ACK for {msg.slot.describe()}, sent {slot.describe()}"
            )
        return msg


# ---- TDISP -------------------------------------------------------------------------------


@dataclass
class TdispRequester:
    """Builders/parsers bound to one INTERFACE_ID."""

    interface_id: InterfaceId

    def get_version(self) -> bytes:
        return GetTdispVersion(self.interface_id).encode_vdm()

    def parse_version(self, payload: bytes) -> TdispVersion:
        msg = expect(payload, TdispVersion, self.interface_id)
        if TDISP_VERSION_10 not in msg.versions:
            raise UnexpectedResponse(f"device offers TDISP versions {msg.versions}, need 1.0")
        return msg

    def get_capabilities(self, tsm_caps: int = 0) -> bytes:
        return GetTdispCapabilities(self.interface_id, tsm_caps).encode_vdm()

    def parse_capabilities(self, payload: bytes) -> TdispCapabilities:
        return expect(payload, TdispCapabilities, self.interface_id)

    def lock(
        self,
        flags: int,
        default_stream_id: int,
        mmio_reporting_offset: int = 0,
        bind_p2p_address_mask: int = 0,
    ) -> bytes:
        return LockInterfaceRequest(
            self.interface_id,
            flags=flags,
            default_stream_id=default_stream_id,
            mmio_reporting_offset=mmio_reporting_offset,
            bind_p2p_address_mask=bind_p2p_address_mask,
        ).encode_vdm()

    def parse_lock(self, payload: bytes) -> bytes:
        """The START_INTERFACE_NONCE."""
        return expect(payload, LockInterfaceResponse, self.interface_id).nonce

    def get_report(self, offset: int, length: int) -> bytes:
        return GetDeviceInterfaceReport(self.interface_id, offset, length).encode_vdm()

    def parse_report(self, payload: bytes) -> DeviceInterfaceReport:
        return expect(payload, DeviceInterfaceReport, self.interface_id)

    def get_state(self) -> bytes:
        return GetDeviceInterfaceState(self.interface_id).encode_vdm()

    def parse_state(self, payload: bytes) -> TdiState:
        state = expect(payload, DeviceInterfaceState, self.interface_id).state
        try:
            return TdiState(state)
        except ValueError as exc:
            raise MalformedMessage(f"TDI_STATE {state}") from exc

    def start(self, nonce: bytes) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise ValueError("START_INTERFACE_NONCE is 32 bytes")
        return StartInterfaceRequest(self.interface_id, nonce).encode_vdm()

    def parse_start(self, payload: bytes) -> StartInterfaceResponse:
        return expect(payload, StartInterfaceResponse, self.interface_id)

    def stop(self) -> bytes:
        return StopInterfaceRequest(self.interface_id).encode_vdm()

    def parse_stop(self, payload: bytes) -> StopInterfaceResponse:
        return expect(payload, StopInterfaceResponse, self.interface_id)

    def bind_p2p(self, p2p_stream_id: int, stream_config: int = 0) -> bytes:
        return BindP2pStreamRequest(self.interface_id, p2p_stream_id, stream_config).encode_vdm()

    def parse_bind_p2p(self, payload: bytes) -> BindP2pStreamResponse:
        return expect(payload, BindP2pStreamResponse, self.interface_id)

    def unbind_p2p(self, p2p_stream_id: int) -> bytes:
        return UnbindP2pStreamRequest(self.interface_id, p2p_stream_id).encode_vdm()

    def parse_unbind_p2p(self, payload: bytes) -> UnbindP2pStreamResponse:
        return expect(payload, UnbindP2pStreamResponse, self.interface_id)

    def set_mmio_attribute(self, mmio_range: MmioRange) -> bytes:
        return SetMmioAttributeRequest(self.interface_id, mmio_range).encode_vdm()

    def parse_set_mmio_attribute(self, payload: bytes) -> SetMmioAttributeResponse:
        return expect(payload, SetMmioAttributeResponse, self.interface_id)

    def vdm(self, registry_id: int, vendor_id: bytes, data: bytes) -> bytes:
        return VdmRequest(self.interface_id, registry_id, vendor_id, data).encode_vdm()

    def parse_vdm(self, payload: bytes) -> VdmResponse:
        return expect(payload, VdmResponse, self.interface_id)

    def report_reader(self, chunk: int = 0x400) -> ReportReader:
        return ReportReader(self, chunk)


@dataclass
class ReportReader:
    """Fetches the interface report in portions (§11.3.10), sans-IO:

    reader = requester.report_reader()
    while (req := reader.next_request()) is not None:
        reader.feed(transport(req))
    report = reader.report()
    """

    requester: TdispRequester
    chunk: int = 0x400
    data: bytearray = field(default_factory=bytearray)
    done: bool = False
    portions: int = 0

    def next_request(self) -> bytes | None:
        if self.done:
            return None
        return self.requester.get_report(len(self.data), self.chunk)

    def feed(self, payload: bytes) -> None:
        msg = self.requester.parse_report(payload)
        if not msg.portion and msg.remainder_length:
            raise UnexpectedResponse("empty REPORT portion with data remaining")
        self.data += msg.portion
        self.portions += 1
        if len(self.data) + msg.remainder_length > 0xFFFF:
            raise UnexpectedResponse("interface report longer than 64 KiB")
        self.done = msg.remainder_length == 0

    def report(self) -> InterfaceReport:
        if not self.done:
            raise UnexpectedResponse("interface report incomplete")
        return InterfaceReport.decode(bytes(self.data))
