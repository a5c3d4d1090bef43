"""TDISP wire formats (PCIe 6.2 §11.3; libspdm pci_tdisp.h)."""

from __future__ import annotations

import pytest

from tdisp.codes import ErrorCode
from tdisp.device_interface import InterfaceId
from tdisp.errors import MalformedMessage, TdispErrorResponse, UnexpectedResponse
from tdisp.messages import (
    RESPONSE_FOR,
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
    TdispError,
    TdispMessage,
    TdispVersion,
    UnbindP2pStreamRequest,
    UnbindP2pStreamResponse,
    VdmRequest,
    VdmResponse,
    decode,
    decode_vdm,
    expect,
    vendor_extended_error,
)
from tdisp.vendor_defined import (
    SPDM_VENDOR_DEFINED_REQUEST,
    SPDM_VENDOR_DEFINED_RESPONSE,
    unwrap_spdm,
    wrap_spdm_request,
    wrap_spdm_response,
)

IID = InterfaceId.of(bus=0x3A, device=2, function=1, segment=1)

ALL_MESSAGES: list[TdispMessage] = [
    GetTdispVersion(IID),
    TdispVersion(IID, (0x10,)),
    TdispVersion(IID, (0x10, 0x11)),
    GetTdispCapabilities(IID, 0),
    TdispCapabilities(IID, 0, (0x7F).to_bytes(16, "little"), 0x17, bytes(3), 52, 1, 1),
    LockInterfaceRequest(IID, 0x5, 1, 0, 1 << 48, 0xFFFF_0000),
    LockInterfaceResponse(IID, bytes(range(32))),
    GetDeviceInterfaceReport(IID, 0x10, 0x400),
    DeviceInterfaceReport(IID, 7, b"\x01\x02\x03"),
    DeviceInterfaceReport(IID, 0, b""),
    GetDeviceInterfaceState(IID),
    DeviceInterfaceState(IID, 2),
    StartInterfaceRequest(IID, bytes(range(32, 64))),
    StartInterfaceResponse(IID),
    StopInterfaceRequest(IID),
    StopInterfaceResponse(IID),
    BindP2pStreamRequest(IID, 4, 0),
    BindP2pStreamResponse(IID),
    UnbindP2pStreamRequest(IID, 4),
    UnbindP2pStreamResponse(IID),
    SetMmioAttributeRequest(IID, MmioRange(0xFD00_0000, 2, 0x8, 2)),
    SetMmioAttributeResponse(IID),
    VdmRequest(IID, 0, b"\x86\x80", b"hello"),
    VdmResponse(IID, 1, b"", b""),
    TdispError(IID, ErrorCode.INVALID_NONCE, 0),
    TdispError(
        IID, ErrorCode.VENDOR_SPECIFIC_ERROR, 0, vendor_extended_error(0, b"\x01\x00", b"x")
    ),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: TdispMessage) -> None:
    wire = msg.encode()
    assert wire[0] == 0x10 and wire[1] == msg.code
    assert decode(wire) == msg
    assert decode_vdm(msg.encode_vdm()) == msg


def test_every_request_has_a_response_type() -> None:
    assert {c: c - 0x80 for c in range(0x81, 0x8C)} == RESPONSE_FOR


def test_lock_request_exact_bytes() -> None:
    iid = InterfaceId.of(bus=1, device=0, function=0)  # RID 0x0100, no segment
    msg = LockInterfaceRequest(
        iid,
        flags=0x0005,  # NO_FW_UPDATE | LOCK_MSIX
        default_stream_id=1,
        mmio_reporting_offset=0x0001_0000_0000_0000,
        bind_p2p_address_mask=0,
    )
    expected = bytes.fromhex(
        "01"  # ProtocolID TDISP
        "10"
        "83"
        "0000"  # version 1.0, LOCK_INTERFACE_REQUEST, reserved
        "00010000"
        "0000000000000000"  # FUNCTION_ID = RID 0x0100, reserved
        "0500"
        "01"
        "00"  # FLAGS, default stream, reserved
        "0000000000000100"  # MMIO_REPORTING_OFFSET
        "0000000000000000"  # BIND_P2P_ADDRESS_MASK
    )
    assert msg.encode_vdm() == expected
    assert len(msg.encode()) == 36  # libspdm pci_tdisp_lock_interface_request_t


def test_sizes() -> None:
    assert len(TdispCapabilities(IID).encode()) == 16 + 28
    assert len(TdispError(IID, 1).encode()) == 24
    assert len(GetDeviceInterfaceReport(IID).encode()) == 20


def test_interface_id_fields() -> None:
    assert IID.requester_id == (0x3A << 8) | (2 << 3) | 1
    assert IID.segment == 1
    assert str(IID) == "0001:3a:02.1"
    assert InterfaceId.of(1, 0, 0).segment is None
    assert InterfaceId(IID.function_id, reserved=5).matches(IID)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x10\x83" + bytes(14),  # LOCK without a body
        GetTdispVersion(IID).encode() + b"\x00",  # trailing byte
        DeviceInterfaceReport(IID, 0, b"abc").encode()[:-1],  # short portion
        b"\x10\x99" + bytes(14),  # unknown type
        b"\x20\x81" + bytes(14),  # other version
        b"\x10\x81",  # short header
    ],
)
def test_strict_parsing(wire: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(wire)


def test_expect_raises_decoded_tdisp_error() -> None:
    payload = TdispError(IID, ErrorCode.INVALID_INTERFACE_STATE, 0).encode_vdm()
    with pytest.raises(TdispErrorResponse) as exc:
        expect(payload, LockInterfaceResponse, IID)
    assert exc.value.name == "INVALID_INTERFACE_STATE"
    assert exc.value.code == 4


def test_expect_rejects_other_type_or_interface() -> None:
    with pytest.raises(UnexpectedResponse):
        expect(StopInterfaceResponse(IID).encode_vdm(), StartInterfaceResponse, IID)
    with pytest.raises(UnexpectedResponse):
        expect(StopInterfaceResponse(IID).encode_vdm(), StopInterfaceResponse, InterfaceId(7))
    with pytest.raises(MalformedMessage):
        expect(b"\x00" + StopInterfaceResponse(IID).encode(), StopInterfaceResponse, IID)


def test_spdm_vendor_defined_wrapping() -> None:
    payload = GetTdispVersion(IID).encode_vdm()
    req = wrap_spdm_request(0x12, payload)
    # ver FE 00 00 | StandardID 0x0003 | Len 2 | VendorID 0x0001 | ReqLength | payload
    assert req[:9] == bytes([0x12, 0xFE, 0, 0, 0x03, 0x00, 0x02, 0x01, 0x00])
    assert int.from_bytes(req[9:11], "little") == len(payload)
    assert unwrap_spdm(req, SPDM_VENDOR_DEFINED_REQUEST) == payload
    rsp = wrap_spdm_response(0x12, b"\x01abc")
    assert unwrap_spdm(rsp, SPDM_VENDOR_DEFINED_RESPONSE) == b"\x01abc"
    with pytest.raises(MalformedMessage):
        unwrap_spdm(rsp, SPDM_VENDOR_DEFINED_REQUEST)
    with pytest.raises(MalformedMessage):
        unwrap_spdm(rsp[:-1], SPDM_VENDOR_DEFINED_RESPONSE)
