"""Wire formats: round trips, exact bytes from published examples, strictness."""

from __future__ import annotations

import pytest

from spdm import messages as m
from spdm.codes import Req, Rsp


def test_get_version_exact_bytes() -> None:
    # DSP0274 / libspdm: GET_VERSION is always SPDMVersion 1.0 with zero params.
    assert m.encode(m.GetVersion, {"version": 0x10}) == bytes.fromhex("10840000")


def test_version_response_exact_bytes() -> None:
    data = m.encode(m.Version, {"version": 0x10, "entries": [0x1000, 0x1100, 0x1200, 0x1300]})
    assert data == bytes.fromhex("10040000 0004 0010 0011 0012 0013".replace(" ", ""))
    parsed = m.decode(m.Version, data)
    assert list(parsed.entries) == [0x1000, 0x1100, 0x1200, 0x1300]


@pytest.mark.parametrize(
    ("version", "size"), [(0x10, 4), (0x11, 12), (0x12, 20), (0x13, 20)]
)
def test_get_capabilities_sizes(version: int, size: int) -> None:
    fields = {"version": version, "flags": 0x2, "data_transfer_size": 4096,
              "max_spdm_msg_size": 4096}
    data = m.encode(m.GetCapabilities, fields)
    assert len(data) == size
    assert m.decode(m.GetCapabilities, data).version == version


def test_negotiate_algorithms_length_and_structs() -> None:
    fields = {
        "version": 0x12, "param1": 2, "meas_spec": 1, "other_params": 2,
        "base_asym": 0x80, "base_hash": 0x2,
        "alg_structs": [{"alg_type": 2, "supported": 0x10}, {"alg_type": 3, "supported": 0x2}],
    }
    data = m.encode(m.NegotiateAlgorithms, fields)
    assert len(data) == 32 + 8
    assert data[4:6] == (40).to_bytes(2, "little")
    assert data[32:36] == bytes([2, 0x20, 0x10, 0x00])
    parsed = m.decode(m.NegotiateAlgorithms, data)
    assert [s.alg_type for s in parsed.alg_structs] == [2, 3]


def test_algorithms_offsets() -> None:
    data = m.encode(m.Algorithms, {
        "version": 0x12, "param1": 1, "meas_spec_sel": 1, "meas_hash_algo": 0x4,
        "base_asym_sel": 0x80, "base_hash_sel": 0x2,
        "alg_structs": [{"alg_type": 2, "supported": 0x10}],
    })
    assert len(data) == 40
    assert data[8:12] == (4).to_bytes(4, "little")
    assert data[12:16] == (0x80).to_bytes(4, "little")
    assert data[16:20] == (2).to_bytes(4, "little")
    assert data[36:40] == bytes([2, 0x20, 0x10, 0])


def test_context_sized_fields() -> None:
    fields = {"version": 0x12, "param2": 0b101, "digests": [b"a" * 48, b"b" * 48]}
    data = m.encode(m.Digests, fields, hash_size=48)
    assert len(data) == 4 + 96
    with pytest.raises(m.MessageFormatError):
        m.decode(m.Digests, data, hash_size=32)


def test_key_exchange_rsp_roundtrip() -> None:
    fields = {
        "version": 0x13, "rsp_session_id": 0xFF00, "random": bytes(32),
        "exchange_data": b"x" * 96, "meas_summary_hash": b"m" * 48, "opaque": b"op",
        "signature": b"s" * 96, "verify_data": b"v" * 48,
    }
    ctx = {"exchange_size": 96, "meas_summary_size": 48, "sig_size": 96, "verify_size": 48}
    data = m.encode(m.KeyExchangeRsp, fields, **ctx)
    assert len(data) == 4 + 4 + 32 + 96 + 48 + 2 + 2 + 96 + 48
    p = m.decode(m.KeyExchangeRsp, data, **ctx)
    assert p.opaque == b"op" and p.signature == b"s" * 96


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(m.MessageFormatError):
        m.decode(m.GetVersion, bytes.fromhex("1084000000"))
    with pytest.raises(m.MessageFormatError):
        m.decode(m.GetVersion, bytes.fromhex("1084"))


def test_get_measurements_13_has_requester_context() -> None:
    unsigned = m.encode(m.GetMeasurements, {"version": 0x13, "param2": 1,
                                            "requester_context": bytes(8)})
    assert len(unsigned) == 12
    signed = m.encode(m.GetMeasurements, {"version": 0x12, "param1": 1, "param2": 1,
                                          "nonce": bytes(32), "slot_id": 0})
    assert len(signed) == 4 + 32 + 1


def test_chunk_send_first_has_large_size() -> None:
    first = m.encode(m.ChunkSend, {"version": 0x12, "chunk_seq_no": 0,
                                   "large_message_size": 9000, "chunk": b"abc"})
    later = m.encode(m.ChunkSend, {"version": 0x12, "chunk_seq_no": 1, "chunk": b"abc"})
    assert len(first) == 12 + 4 + 3 and len(later) == 12 + 3


def test_error_with_response_not_ready() -> None:
    ext = m.encode(m.ResponseNotReadyData, {"rdt_exponent": 10, "request_code": 0xE0,
                                            "token": 7, "rdtm": 1})
    data = m.encode(m.Error, {"version": 0x12, "param1": 0x42, "extended": ext})
    assert data == bytes([0x12, 0x7F, 0x42, 0x00, 10, 0xE0, 7, 1])


def test_vendor_defined_pci_sig_framing() -> None:
    data = m.encode(m.VendorDefinedRequest, {
        "version": 0x12, "standard_id": 3, "vendor_id": b"\x01\x00", "payload": b"\x00\x00\x00\x00",
    })
    # ver FE 00 00 | StandardID 0003 | Len 2 | VendorID 0001 | PayloadLen | ProtocolID | msg
    assert data.hex() == "12fe0000" + "0300" + "02" + "0100" + "0400" + "00000000"


def test_codes() -> None:
    assert Req.GET_VERSION == 0x84 and Rsp.VERSION == 0x04
    assert Req.CHUNK_SEND == 0x85 and Rsp.CHUNK_RESPONSE == 0x06
