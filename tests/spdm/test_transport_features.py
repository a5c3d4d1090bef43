"""Chunking (CHUNK_SEND / CHUNK_GET), Busy, ResponseNotReady / RESPOND_IF_READY."""

from __future__ import annotations

import pytest

from spdm import messages as m
from spdm.codes import ErrorCode, Req, ReqCap
from spdm.errors import ErrorResponse
from spdm.hooks import ResponderHooks
from spdm.identity import DeviceIdentity
from spdm.requester import DEFAULT_REQ_CAPS
from tests.helpers.spdm_harness import make_link_13 as make_link


def test_large_response_via_chunk_get(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, req={"data_transfer_size": 256})
    link.connect()
    # GET_CERTIFICATE asks for portions that fit 256 bytes: no chunking needed there...
    assert all(len(a) <= 256 for _, q, a in link.log if q[1] == Req.GET_CERTIFICATE)
    assert link.requester.cert_chains[0] == p384_identity.spdm_chain(0x2)
    big = link.run(link.requester.get_certificate(0, portion=0x400))  # ...unless asked
    assert big == p384_identity.spdm_chain(0x2)
    assert Req.CHUNK_GET in [entry[1][1] for entry in link.log]
    # Signed measurements (> 256 bytes) inside a session also come back chunked.
    sid = link.session()
    blocks = link.run(link.requester.get_measurements(session_id=sid))
    assert len(blocks) == 7


def test_large_request_via_chunk_send(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, rsp={"data_transfer_size": 64})
    link.connect()
    sid = link.session()  # KEY_EXCHANGE (158 bytes) exceeds 64 -> CHUNK_SEND
    codes = [entry[1][1] for entry in link.log if entry[0] == 1]
    assert Req.CHUNK_SEND in codes
    link.run(link.requester.heartbeat(sid))


def test_response_too_large_without_chunk(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, req={
        "capabilities": int(DEFAULT_REQ_CAPS & ~ReqCap.CHUNK),
        "data_transfer_size": 300, "max_spdm_msg_size": 300})
    link.connect()  # certificate portions are clamped to fit
    with pytest.raises(ErrorResponse) as exc:
        link.run(link.requester.get_measurements())
    assert exc.value.code == ErrorCode.RESPONSE_TOO_LARGE


def _chunk(seq: int, chunk: bytes, *, handle: int = 1, last: bool = False,
           large: int | None = None) -> bytes:
    f = {"version": 0x13, "param1": 1 if last else 0, "param2": handle, "chunk_seq_no": seq,
         "chunk": chunk}
    if seq == 0:
        f["large_message_size"] = large
    return m.encode(m.ChunkSend, f)


@pytest.mark.parametrize(
    ("name", "sequence"),
    [
        ("skipped sequence number", [_chunk(0, b"a" * 40, large=100), _chunk(2, b"b" * 40)]),
        ("handle changes", [_chunk(0, b"a" * 40, large=100), _chunk(1, b"b" * 40, handle=9)]),
        ("overrun", [_chunk(0, b"a" * 40, large=70), _chunk(1, b"b" * 40)]),
        ("last too early", [_chunk(0, b"a" * 40, large=100), _chunk(1, b"b" * 10, last=True)]),
        ("size reached without last", [_chunk(0, b"a" * 40, large=70), _chunk(1, b"b" * 30)]),
        ("restart while in progress", [_chunk(0, b"a" * 40, large=100),
                                       _chunk(0, b"a" * 40, large=100)]),
        ("too large for max", [_chunk(0, b"a" * 40, large=10**6)]),
    ],
)
def test_chunk_send_errors(p384_identity: DeviceIdentity, name: str,
                           sequence: list[bytes]) -> None:
    """A chunk that breaks the transfer: CHUNK_SEND_ACK with EarlyErrorDetected (param1
    bit 0) echoing handle and ChunkSeqNo, the ERROR as ResponseToLargeRequest (DSP0274
    1.2 CHUNK_SEND_ACK); LargeMessageSize above MaxSPDMmsgSize is RequestTooLarge."""
    link = make_link(p384_identity, rsp={"data_transfer_size": 64})
    link.connect()
    resp = b""
    for req in sequence:
        resp = link.responder.handle(req)
    assert resp[:2] == bytes([0x13, 0x05]) and resp[2] & 1
    assert resp[3] == sequence[-1][3] and resp[4:6] == sequence[-1][4:6]
    code = ErrorCode.REQUEST_TOO_LARGE if name == "too large for max" else \
        ErrorCode.INVALID_REQUEST
    assert resp[6:8] == bytes([0x13, 0x7F]) and resp[8] == code
    link.run(link.requester.get_digests())
    link.session()  # a correct chunked request works afterwards


def test_chunk_get_errors(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, req={"data_transfer_size": 256})
    link.connect()
    r = link.responder
    resp = r.handle(bytes([0x13, Req.GET_CERTIFICATE, 0, 0, 0, 0, 0x00, 0x04]))
    assert resp[2] == ErrorCode.LARGE_RESPONSE
    handle = resp[4]
    bad = r.handle(m.encode(m.ChunkGet, {"version": 0x13, "param2": handle, "chunk_seq_no": 3}))
    assert bad[2] == ErrorCode.INVALID_REQUEST
    bad = r.handle(m.encode(m.ChunkGet, {"version": 0x13, "param2": handle ^ 0xFF,
                                         "chunk_seq_no": 0}))
    assert bad[2] == ErrorCode.INVALID_REQUEST
    ok = r.handle(m.encode(m.ChunkGet, {"version": 0x13, "param2": handle, "chunk_seq_no": 0}))
    assert ok[1] == 0x06 and len(ok) <= 256


def test_busy_is_retried(p384_identity: DeviceIdentity) -> None:
    calls: list[int] = []

    def busy(code: int) -> bool:
        calls.append(code)
        return code == Req.GET_DIGESTS and calls.count(code) == 1

    link = make_link(p384_identity, rsp_hooks=ResponderHooks(busy=busy))
    link.connect()
    assert calls.count(Req.GET_DIGESTS) == 2


def test_busy_forever_surfaces(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, rsp_hooks=ResponderHooks(busy=lambda c: c == Req.GET_DIGESTS))
    link.run(link.requester.init_connection())
    with pytest.raises(ErrorResponse) as exc:
        link.run(link.requester.get_digests())
    assert exc.value.code == ErrorCode.BUSY


def test_response_not_ready_then_respond_if_ready(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, rsp_hooks=ResponderHooks(
        not_ready=lambda c: c in (Req.CHALLENGE, Req.GET_MEASUREMENTS, Req.KEY_EXCHANGE)))
    link.connect()
    link.run(link.requester.challenge())
    link.run(link.requester.get_measurements())
    sid = link.session()
    link.run(link.requester.get_measurements(session_id=sid))
    codes = [e[1][1] for e in link.log if e[0] == 1]
    assert codes.count(Req.RESPOND_IF_READY) == 3
    delays: list[int] = []
    op = link.requester.challenge()
    while not op.done:
        assert op.request is not None
        delays.append(op.request.delay_us)
        op.feed(link.transport(op.request))
    assert delays == [0, 1 << 10]  # RDTExponent 10, RDTM 1
    # The ERROR carried the ResponseNotReady extended data.
    nr = next(e[2] for e in link.log if e[2][1:3] == b"\x7f\x42")
    ext = m.decode(m.ResponseNotReadyData, nr[4:])
    assert ext.request_code == Req.CHALLENGE and ext.rdtm == 1


def test_respond_if_ready_wrong_token(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity,
                     rsp_hooks=ResponderHooks(not_ready=lambda c: c == Req.GET_DIGESTS))
    link.run(link.requester.init_connection())
    nr = link.responder.handle(bytes([0x13, Req.GET_DIGESTS, 0, 0]))
    token = nr[6]
    bad = link.responder.handle(bytes([0x13, Req.RESPOND_IF_READY, Req.GET_DIGESTS, token ^ 1]))
    assert bad[2] == ErrorCode.UNEXPECTED_REQUEST
    good = link.responder.handle(bytes([0x13, Req.RESPOND_IF_READY, Req.GET_DIGESTS, token]))
    assert good[1] == 0x01


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def test_doe_dword_padding_full_flow(p384_identity: DeviceIdentity) -> None:
    """DOE objects are DWORD multiples: every message (both directions) arrives with up to
    three zero bytes appended; transcripts must hash the unpadded messages."""
    for version in (0x12, 0x13):
        link = make_link(p384_identity, req={"versions": (version,)})

        def transport(out, link=link):  # type: ignore[no-untyped-def]
            kind, reply = link.responder.handle_doe(out.doe_type, _pad(out.data))
            return _pad(reply)

        r = link.requester
        r.run(r.init_connection(), transport)
        r.run(r.get_digests(), transport)
        r.run(r.get_certificate(), transport)
        r.run(r.challenge(), transport)
        r.run(r.get_measurements(0xFF), transport)  # 37-byte request in 1.2
        r.run(r.get_measurements(3), transport)
        sid = r.run(r.key_exchange(), transport)
        r.run(r.get_measurements(session_id=sid), transport)
        r.run(r.key_update(sid), transport)
        r.run(r.end_session(sid), transport)


@pytest.mark.parametrize("extra", [b"\x00\x00\x00\x00", b"\x01\x00\x00", b"\x00"])
def test_bad_padding_rejected(p384_identity: DeviceIdentity, extra: bytes) -> None:
    link = make_link(p384_identity, req={"versions": (0x12,)})
    link.connect()
    req = m.encode(m.GetMeasurements, {"version": 0x12, "param1": 1, "param2": 0xFF,
                                       "nonce": bytes(32), "slot_id": 0})
    assert len(req) == 37
    resp = link.responder.handle(req + extra)
    assert resp[1] == 0x7F and resp[2] == ErrorCode.INVALID_REQUEST
    ok = link.responder.handle(req + b"\x00\x00\x00")
    assert ok[1] == 0x60


def test_chunk_send_and_chunk_get_together(p384_identity: DeviceIdentity) -> None:
    """Both sides small: the large request goes out in CHUNK_SEND and its large response
    comes back via ERROR(LargeResponse) inside CHUNK_SEND_ACK, then CHUNK_GET."""
    link = make_link(p384_identity, rsp={"data_transfer_size": 64},
                     req={"data_transfer_size": 64})
    link.connect()
    sid = link.session()
    codes = [e[1][1] for e in link.log if e[0] == 1]
    assert Req.CHUNK_SEND in codes and Req.CHUNK_GET in codes
    assert all(len(e[2]) <= 64 for e in link.log if e[0] == 1)
    link.run(link.requester.get_measurements(session_id=sid))
