"""CHUNK_SEND / CHUNK_GET whenever a message exceeds the peer's DataTransferSize, down to
DSP0274's MinDataTransferSize (42) on both sides, with post-quantum messages (KB-sized
keys and signatures); MaxSPDMmsgSize honoured on both sides with the spec's codes."""

from __future__ import annotations

import pytest

from spdm import messages as m
from spdm.algorithms import Kem
from spdm.codes import ErrorCode, Req
from spdm.errors import ErrorResponse, RequestTooLarge
from spdm.responder import AlgorithmPriorities
from tests.helpers.spdm_harness import Link, identity_for, make_link

MIN_DTS = 42  # DSP0274 1.2 MinDataTransferSize


def _link(key_type: str, kem: int, *, rsp_dts: int = 4096, req_dts: int = 4096,
          rsp_max: int = 65536, req_max: int = 65536, versions: tuple[int, ...] = (
              0x10, 0x11, 0x12, 0x13, 0x14)) -> Link:
    return make_link(identity_for(key_type), rsp={
        "algorithms": AlgorithmPriorities(kem=(kem,), pqc_first=True),
        "data_transfer_size": rsp_dts, "max_spdm_msg_size": rsp_max, "versions": versions},
        req={"data_transfer_size": req_dts, "max_spdm_msg_size": req_max})


@pytest.mark.parametrize("version", [0x13, 0x14])
@pytest.mark.parametrize("dts", [MIN_DTS, 100, 1000])
def test_small_transfer_sizes_both_sides(version: int, dts: int) -> None:
    """Every message on the wire fits both DataTransferSizes; a whole PQC connect, signed
    measurements, a session and secured traffic still work (1.3: P-384 with ECDHE, whose
    KEY_EXCHANGE and CERTIFICATE are chunked at these sizes too)."""
    key_type, kem = ("mldsa-44", Kem.ML_KEM_768) if version == 0x14 else ("ecdsa-p384", 0)
    link = _link(key_type, kem, rsp_dts=dts, req_dts=dts, versions=(version,))
    r = link.requester
    link.connect()
    assert r.version == version
    link.run(r.get_measurements(0xFF, signed=True))
    sid = link.session()
    link.run(r.get_measurements(0xFF, signed=True, session_id=sid))
    link.run(r.heartbeat(sid))
    plain = [(q, a) for kind, q, a in link.log if kind == 1]
    assert all(len(q) <= dts and len(a) <= dts for q, a in plain)
    codes = {q[1] for q, _ in plain}
    if dts < 1000:  # a 1.3 P-384 KEY_EXCHANGE is 158 bytes, its signed MEASUREMENTS ~ 700
        assert Req.CHUNK_SEND in codes and Req.CHUNK_GET in codes
    # Inside the session the plaintext messages also respect DataTransferSize.
    assert link.responder.conn.req_data_transfer_size == dts


def test_chunk_sequence_numbers_beyond_16_bits_only_from_14() -> None:
    """At 42 bytes a 64 KB message needs > 2000 chunks: fine for u16; the 1.4 layout is
    u32 (DSP0274 1.4 CHUNK_GET) and decodes numbers a u16 cannot hold."""
    msg = m.encode(m.ChunkGet, {"version": 0x14, "param2": 7, "chunk_seq_no": 70000})
    assert msg == bytes([0x14, 0x86, 0, 7]) + (70000).to_bytes(4, "little")
    with pytest.raises(m.MessageFormatError):
        m.encode(m.ChunkGet, {"version": 0x13, "param2": 7, "chunk_seq_no": 70000})


def test_response_above_requester_max_message_size() -> None:
    """KEY_EXCHANGE_RSP with ML-DSA-87 + ML-KEM-1024 is 6297 bytes: above the requester's
    MaxSPDMmsgSize the responder answers ERROR ResponseTooLarge with the size."""
    link = _link("mldsa-87", Kem.ML_KEM_1024, req_dts=4096, req_max=6000)
    link.connect()
    with pytest.raises(ErrorResponse) as exc:
        link.session()
    assert exc.value.code == ErrorCode.RESPONSE_TOO_LARGE
    assert int.from_bytes(exc.value.extended[:4], "little") == 6297
    assert not link.responder.sessions


def test_request_above_responder_max_message_size() -> None:
    """KEY_EXCHANGE with an ML-KEM-1024 key (1632 bytes) to a responder whose
    MaxSPDMmsgSize is 1500: the requester does not send it; a raw CHUNK_SEND announcing it
    gets CHUNK_SEND_ACK EarlyErrorDetected with ERROR RequestTooLarge."""
    link = _link("ecdsa-p384", Kem.ML_KEM_1024, rsp_dts=1000, rsp_max=1500)
    link.connect()
    sent = len(link.log)
    with pytest.raises(RequestTooLarge):
        link.session()
    assert len(link.log) == sent  # nothing went out
    first = m.encode(m.ChunkSend, {"version": 0x14, "param2": 3, "chunk_seq_no": 0,
                                   "large_message_size": 1632, "chunk": bytes(500)})
    ack = link.responder.handle(first)
    assert ack[:4] == bytes([0x14, 0x05, 1, 3]) and ack[4:8] == bytes(4)
    assert ack[8:11] == bytes([0x14, 0x7F, ErrorCode.REQUEST_TOO_LARGE])


def test_chunk_get_with_nothing_pending_and_interleaved() -> None:
    link = _link("mldsa-65", Kem.ML_KEM_768, req_dts=1024)
    link.connect()
    rsp = link.responder
    bad = rsp.handle(m.encode(m.ChunkGet, {"version": 0x14, "param2": 9, "chunk_seq_no": 0}))
    assert bad[1] == 0x7F and bad[2] == ErrorCode.INVALID_REQUEST
    # A new GET_CERTIFICATE larger than 1024 replaces a half-read large response.
    first = rsp.handle(bytes([0x14, 0x82, 0, 0, 0, 0, 0x00, 0x10]))
    assert first[2] == ErrorCode.LARGE_RESPONSE
    h1 = first[4]
    rsp.handle(m.encode(m.ChunkGet, {"version": 0x14, "param2": h1, "chunk_seq_no": 0}))
    second = rsp.handle(bytes([0x14, 0x82, 0, 0, 0, 0, 0x00, 0x10]))
    h2 = second[4]
    assert h2 != h1
    stale = rsp.handle(m.encode(m.ChunkGet, {"version": 0x14, "param2": h1,
                                             "chunk_seq_no": 1}))
    assert stale[1] == 0x7F
    ok = rsp.handle(m.encode(m.ChunkGet, {"version": 0x14, "param2": h2, "chunk_seq_no": 0}))
    assert ok[1] == 0x06 and len(ok) <= 1024
