"""Table-driven negative tests: each malformed or out-of-state request gets the right ERROR,
and the responder keeps serving the next correct request."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from spdm import messages as m
from spdm.codes import ErrorCode, Req
from spdm.errors import ErrorResponse, PeerError
from spdm.identity import DeviceIdentity
from spdm.requester import Outgoing
from spdm.responder import Responder
from tests.helpers.spdm_harness import Link
from tests.helpers.spdm_harness import make_link_13 as make_link

V = 0x13


def _err(resp: bytes) -> int:
    """The ERROR code of a response; a broken CHUNK_SEND transfer is answered with
    CHUNK_SEND_ACK EarlyErrorDetected carrying the ERROR after its 6-byte (1.3) header."""
    if resp[1] == 0x05 and resp[2] & 1:
        resp = resp[6:]
    assert resp[1] == 0x7F, f"expected ERROR, got {resp.hex()}"
    return resp[2]


def _connected(identity: DeviceIdentity, **rsp: object) -> Link:
    link = make_link(identity, rsp=dict(rsp))
    link.connect()
    return link


def _alive(link: Link) -> None:
    """The responder still answers a correct request afterwards."""
    link.run(link.requester.get_digests())


# Requests sent after a full VCA with SPDM 1.3 negotiated.
NEGOTIATED_CASES: list[tuple[str, bytes, int]] = [
    ("wrong version", bytes([0x12, Req.GET_DIGESTS, 0, 0]), ErrorCode.VERSION_MISMATCH),
    ("truncated header", bytes([V, Req.GET_DIGESTS]), ErrorCode.INVALID_REQUEST),
    ("oversized GET_DIGESTS", bytes([V, Req.GET_DIGESTS, 0, 0, 0]), ErrorCode.INVALID_REQUEST),
    ("unknown code", bytes([V, 0xF5, 0, 0]), ErrorCode.UNSUPPORTED_REQUEST),
    ("response code", bytes([V, 0x04, 0, 0]), ErrorCode.UNSUPPORTED_REQUEST),
    ("GET_CAPABILITIES again", bytes([V, Req.GET_CAPABILITIES, 0, 0]) + bytes(16),
     ErrorCode.UNEXPECTED_REQUEST),
    ("cert slot not provisioned", bytes([V, Req.GET_CERTIFICATE, 3, 0, 0, 0, 0x10, 0]),
     ErrorCode.INVALID_REQUEST),
    ("cert offset beyond chain", bytes([V, Req.GET_CERTIFICATE, 0, 0, 0xFF, 0xFF, 0x10, 0]),
     ErrorCode.INVALID_REQUEST),
    ("cert slot reserved bits", bytes([V, Req.GET_CERTIFICATE, 0x10, 0, 0, 0, 0x10, 0]),
     ErrorCode.INVALID_REQUEST),
    ("cert truncated", bytes([V, Req.GET_CERTIFICATE, 0, 0, 0, 0]), ErrorCode.INVALID_REQUEST),
    ("challenge truncated nonce", bytes([V, Req.CHALLENGE, 0, 0]) + bytes(20),
     ErrorCode.INVALID_REQUEST),
    ("challenge bad slot", bytes([V, Req.CHALLENGE, 9, 0]) + bytes(40),
     ErrorCode.INVALID_REQUEST),
    ("challenge bad summary type", bytes([V, Req.CHALLENGE, 0, 5]) + bytes(40),
     ErrorCode.INVALID_REQUEST),
    ("measurement bad index", bytes([V, Req.GET_MEASUREMENTS, 0, 0x50]) + bytes(8),
     ErrorCode.INVALID_REQUEST),
    ("measurement bad slot", bytes([V, Req.GET_MEASUREMENTS, 1, 0xFF]) + bytes(32) + b"\x05"
     + bytes(8), ErrorCode.INVALID_REQUEST),
    ("measurement missing context", bytes([V, Req.GET_MEASUREMENTS, 0, 0xFF]),
     ErrorCode.INVALID_REQUEST),
    ("FINISH outside session", bytes([V, Req.FINISH, 0, 0]) + bytes(48),
     ErrorCode.SESSION_REQUIRED),
    ("HEARTBEAT outside session", bytes([V, Req.HEARTBEAT, 0, 0]), ErrorCode.SESSION_REQUIRED),
    ("KEY_UPDATE outside session", bytes([V, Req.KEY_UPDATE, 1, 0]),
     ErrorCode.SESSION_REQUIRED),
    ("END_SESSION outside session", bytes([V, Req.END_SESSION, 0, 0]),
     ErrorCode.SESSION_REQUIRED),
    ("RESPOND_IF_READY nothing pending", bytes([V, Req.RESPOND_IF_READY, 0xE0, 1]),
     ErrorCode.UNEXPECTED_REQUEST),
    ("CHUNK_GET nothing pending", bytes([V, Req.CHUNK_GET, 0, 1, 0, 0]),
     ErrorCode.INVALID_REQUEST),
    ("CHUNK_SEND bad first seq", m.encode(m.ChunkSend, {"version": V, "chunk_seq_no": 1,
                                                        "chunk": b"x" * 8}),
     ErrorCode.INVALID_REQUEST),
    ("CHUNK_SEND LargeMessageSize small", m.encode(m.ChunkSend, {
        "version": V, "chunk_seq_no": 0, "large_message_size": 10, "chunk": b"x" * 8}),
     ErrorCode.INVALID_REQUEST),
    ("vendor not registered", m.encode(m.VendorDefinedRequest, {
        "version": V, "standard_id": 3, "vendor_id": b"\x01\x00", "payload": b"\x07"}),
     ErrorCode.UNSUPPORTED_REQUEST),
    ("vendor truncated", bytes([V, 0xFE, 0, 0, 3, 0, 2, 1]), ErrorCode.INVALID_REQUEST),
    ("key exchange bad point", m.encode(m.KeyExchange, {
        "version": V, "param2": 0, "req_session_id": 1, "random": bytes(32),
        "exchange_data": b"\x01" * 96, "opaque": b""}, exchange_size=96),
     ErrorCode.INVALID_REQUEST),
    ("key exchange truncated", bytes([V, Req.KEY_EXCHANGE, 0, 0, 1, 0, 0, 0]) + bytes(40),
     ErrorCode.INVALID_REQUEST),
    ("psk unknown hint", m.encode(m.PskExchange, {
        "version": V, "req_session_id": 1, "psk_hint": b"nope", "context": bytes(48),
        "opaque": b""}), ErrorCode.INVALID_REQUEST),
]


@pytest.mark.parametrize(("name", "request_bytes", "code"), NEGOTIATED_CASES,
                         ids=[c[0] for c in NEGOTIATED_CASES])
def test_negotiated_errors(p384_identity: DeviceIdentity, name: str, request_bytes: bytes,
                           code: int) -> None:
    link = _connected(p384_identity)
    resp = link.responder.handle(request_bytes)
    assert _err(resp) == code
    assert resp[0] in (0x13, 0x10)
    _alive(link)


def _gv() -> bytes:
    return bytes([0x10, Req.GET_VERSION, 0, 0])


def _gc(version: int = V, flags: int = 0x6, dts: int = 4096, mx: int = 4096) -> bytes:
    return m.encode(m.GetCapabilities, {"version": version, "ct_exponent": 10, "flags": flags,
                                        "data_transfer_size": dts, "max_spdm_msg_size": mx})


def _na(version: int = V, structs: list[dict[str, int]] | None = None,
        length_delta: int = 0) -> bytes:
    structs = structs if structs is not None else [{"alg_type": 2, "supported": 0x10}]
    data = bytearray(m.encode(m.NegotiateAlgorithms, {
        "version": version, "param1": len(structs), "meas_spec": 1, "other_params": 2,
        "base_asym": 0x80, "base_hash": 0x2, "alg_structs": structs}))
    struct.pack_into("<H", data, 4, len(data) + length_delta)
    return bytes(data)


VCA_CASES: list[tuple[str, list[bytes], int]] = [
    ("GET_VERSION wrong version", [bytes([0x11, Req.GET_VERSION, 0, 0])],
     ErrorCode.VERSION_MISMATCH),
    ("GET_VERSION truncated", [bytes([0x10, Req.GET_VERSION, 0])], ErrorCode.INVALID_REQUEST),
    ("GET_VERSION oversized", [_gv() + b"\x00"], ErrorCode.INVALID_REQUEST),
    ("capabilities first", [_gc()], ErrorCode.UNEXPECTED_REQUEST),
    ("algorithms before capabilities", [_gv(), _na()], ErrorCode.UNEXPECTED_REQUEST),
    ("digests before algorithms", [_gv(), _gc(), bytes([V, Req.GET_DIGESTS, 0, 0])],
     ErrorCode.UNEXPECTED_REQUEST),
    ("capabilities unknown version", [_gv(), _gc(version=0x14)], ErrorCode.VERSION_MISMATCH),
    ("capabilities DTS below minimum", [_gv(), _gc(dts=40, mx=40)], ErrorCode.INVALID_REQUEST),
    ("capabilities DTS != max without CHUNK", [_gv(), _gc(dts=100, mx=4096)],
     ErrorCode.INVALID_REQUEST),
    ("capabilities KEY_EX without ENCRYPT/MAC", [_gv(), _gc(flags=0x206)],
     ErrorCode.INVALID_REQUEST),
    ("capabilities CERT and PUB_KEY_ID", [_gv(), _gc(flags=0x10002)],
     ErrorCode.INVALID_REQUEST),
    ("capabilities truncated", [_gv(), _gc()[:16]], ErrorCode.INVALID_REQUEST),
    ("algorithms Length mismatch", [_gv(), _gc(), _na(length_delta=4)],
     ErrorCode.INVALID_REQUEST),
    ("algorithms structs out of order", [_gv(), _gc(), _na(structs=[
        {"alg_type": 3, "supported": 2}, {"alg_type": 2, "supported": 0x10}])],
     ErrorCode.INVALID_REQUEST),
    ("algorithms unknown struct", [_gv(), _gc(), _na(structs=[{"alg_type": 9, "supported": 1}])],
     ErrorCode.INVALID_REQUEST),
    ("algorithms bad AlgCount", [_gv(), _gc(), _na(structs=[
        {"alg_type": 2, "alg_count": 0x30, "supported": 0x10}])], ErrorCode.INVALID_REQUEST),
    ("algorithms version mismatch", [_gv(), _gc(), _na(version=0x12)],
     ErrorCode.VERSION_MISMATCH),
]


@pytest.mark.parametrize(("name", "requests", "code"), VCA_CASES, ids=[c[0] for c in VCA_CASES])
def test_vca_errors(p384_identity: DeviceIdentity, name: str, requests: list[bytes],
                    code: int) -> None:
    link = make_link(p384_identity)
    resp = b""
    for req in requests:
        resp = link.responder.handle(req)
    assert _err(resp) == code
    # A full, correct VCA still succeeds afterwards.
    link.connect()


def test_vca_ok_exact_version_response(p384_identity: DeviceIdentity) -> None:
    rsp = Responder()
    assert rsp.handle(_gv()) == bytes.fromhex("10040000000500100011001200130014")
    caps = rsp.handle(_gc(flags=0x6))
    assert caps[:2] == bytes([V, 0x61]) and len(caps) == 20
    algs = rsp.handle(_na())
    assert algs[1] == 0x63


# ---- secured-session failures ----------------------------------------------------------------


def _session_link(identity: DeviceIdentity, **rsp: object) -> tuple[Link, int]:
    link = _connected(identity, **rsp)
    return link, link.session()


def _send_secured(link: Link, sid: int, msg: bytes) -> bytes:
    """Seal msg with the requester's session, answer with the responder, open the reply."""
    sess = link.requester.sessions[sid]
    kind, rec = link.responder.handle_doe(2, sess.seal(msg, from_requester=True))
    if kind == 1:
        return rec
    return sess.open(rec, from_requester=False)


@pytest.mark.parametrize(
    ("name", "msg", "code"),
    [
        ("GET_VERSION in session", _gv(), ErrorCode.UNEXPECTED_REQUEST),
        ("CHALLENGE in session", bytes([V, Req.CHALLENGE, 0, 0]) + bytes(40),
         ErrorCode.UNEXPECTED_REQUEST),
        ("FINISH again", bytes([V, Req.FINISH, 0, 0]) + bytes(48), ErrorCode.UNEXPECTED_REQUEST),
        ("PSK_FINISH on key-exchange session", bytes([V, Req.PSK_FINISH, 0, 0]) + bytes(48),
         ErrorCode.UNEXPECTED_REQUEST),
        ("KEY_UPDATE bad operation", bytes([V, Req.KEY_UPDATE, 7, 0]), ErrorCode.INVALID_REQUEST),
        ("HEARTBEAT oversized", bytes([V, Req.HEARTBEAT, 0, 0, 0]), ErrorCode.INVALID_REQUEST),
        ("wrong version in session", bytes([0x12, Req.HEARTBEAT, 0, 0]),
         ErrorCode.VERSION_MISMATCH),
    ],
)
def test_in_session_errors(p384_identity: DeviceIdentity, name: str, msg: bytes,
                           code: int) -> None:
    link, sid = _session_link(p384_identity)
    assert _err(_send_secured(link, sid, msg)) == code
    link.run(link.requester.heartbeat(sid))


def test_bad_mac_terminates_session(p384_identity: DeviceIdentity) -> None:
    link, sid = _session_link(p384_identity)
    sess = link.requester.sessions[sid]
    rec = bytearray(sess.seal(bytes([V, Req.HEARTBEAT, 0, 0]), from_requester=True))
    rec[-1] ^= 0x80
    kind, reply = link.responder.handle_doe(2, bytes(rec))
    assert kind == 1 and _err(reply) == ErrorCode.DECRYPT_ERROR
    assert sid not in link.responder.sessions
    _alive(link)
    sid2 = link.session()
    link.run(link.requester.heartbeat(sid2))


def test_replayed_record_rejected(p384_identity: DeviceIdentity) -> None:
    link, sid = _session_link(p384_identity, terminate_session_on_decrypt_error=False)
    sess = link.requester.sessions[sid]
    rec = sess.seal(bytes([V, Req.HEARTBEAT, 0, 0]), from_requester=True)
    kind, reply = link.responder.handle_doe(2, rec)
    assert kind == 2
    sess.open(reply, from_requester=False)
    kind, reply = link.responder.handle_doe(2, rec)  # replay: same sequence number
    assert kind == 1 and _err(reply) == ErrorCode.DECRYPT_ERROR
    link.run(link.requester.heartbeat(sid))  # session survives when so configured


def test_wrong_session_id(p384_identity: DeviceIdentity) -> None:
    link, sid = _session_link(p384_identity)
    rec = bytearray(link.requester.sessions[sid].seal(bytes([V, Req.HEARTBEAT, 0, 0]),
                                                      from_requester=True))
    struct.pack_into("<I", rec, 0, sid ^ 0x00010000)
    kind, reply = link.responder.handle_doe(2, bytes(rec))
    assert kind == 1 and _err(reply) == ErrorCode.SESSION_REQUIRED
    assert sid in link.responder.sessions


def test_truncated_record(p384_identity: DeviceIdentity) -> None:
    link, sid = _session_link(p384_identity)
    kind, reply = link.responder.handle_doe(2, b"\x01\x00")
    assert kind == 1 and _err(reply) == ErrorCode.INVALID_REQUEST


def test_finish_bad_verify_data(p384_identity: DeviceIdentity) -> None:
    link = _connected(p384_identity)

    def corrupt(out: Outgoing) -> Outgoing:
        if out.secured and link.responder.sessions:
            sess = next(iter(link.responder.sessions.values()))
            if sess.state.value == "handshaking":
                # Re-seal a FINISH with a corrupted RequesterVerifyData.
                rsess = link.requester.sessions[out.session_id or 0]
                rsess.req_prot.seq -= 1  # type: ignore[union-attr]
                plain = bytes([V, Req.FINISH, 0, 0]) + bytes(48)
                return Outgoing(rsess.seal(plain, from_requester=True), True, out.session_id)
        return out

    link.tamper = corrupt
    with pytest.raises(ErrorResponse) as exc:
        link.session()
    assert exc.value.code == ErrorCode.DECRYPT_ERROR
    assert not link.responder.sessions
    link.tamper = None
    link.session()


def test_session_limit(p384_identity: DeviceIdentity) -> None:
    link = _connected(p384_identity, max_sessions=1)
    link.session()
    with pytest.raises(ErrorResponse) as exc:
        link.session()
    assert exc.value.code == ErrorCode.SESSION_LIMIT_EXCEEDED


def test_get_version_resets_sessions(p384_identity: DeviceIdentity) -> None:
    link, sid = _session_link(p384_identity)
    link.run(link.requester.get_version())
    assert not link.responder.sessions


# ---- requester-side validation -------------------------------------------------------------


def _tamper_response(link: Link, code: int, mutate: Callable[[bytes], bytes]) -> None:
    orig = link.responder.handle

    def handle(req: bytes) -> bytes:
        resp = orig(req)
        return mutate(resp) if resp[1] == code else resp

    link.responder.handle = handle  # type: ignore[method-assign]


def _flip_last(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


@pytest.mark.parametrize("code", [0x03, 0x60])
def test_requester_rejects_bad_signature(p384_identity: DeviceIdentity, code: int) -> None:
    link = _connected(p384_identity)
    _tamper_response(link, code, _flip_last)
    with pytest.raises(PeerError, match="signature"):
        if code == 0x03:
            link.run(link.requester.challenge())
        else:
            link.run(link.requester.get_measurements())


def test_requester_rejects_bad_key_exchange_rsp(p384_identity: DeviceIdentity) -> None:
    link = _connected(p384_identity)
    _tamper_response(link, 0x64, _flip_last)
    with pytest.raises(PeerError, match="VerifyData"):
        link.session()


@pytest.mark.parametrize(
    ("code", "mutate"),
    [
        (0x04, lambda b: b[:-2]),  # VERSION truncated
        (0x61, lambda b: b + b"\x00"),  # CAPABILITIES oversized
        (0x63, lambda b: b[:16] + (0x3).to_bytes(4, "little") + b[20:]),  # two hash bits
        (0x63, lambda b: b[:12] + (0x200).to_bytes(4, "little") + b[16:]),  # SM2 not offered
    ],
)
def test_requester_rejects_bad_vca(p384_identity: DeviceIdentity, code: int,
                                   mutate: Callable[[bytes], bytes]) -> None:
    link = make_link(p384_identity)
    _tamper_response(link, code, mutate)
    with pytest.raises(PeerError):
        link.run(link.requester.init_connection())


def test_requester_rejects_digest_mismatch(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity)
    link.run(link.requester.init_connection())
    link.run(link.requester.get_digests())
    link.requester.digests[0] = bytes(48)
    with pytest.raises(PeerError):
        link.run(link.requester.get_certificate(0))


def test_requester_surfaces_error_response(p384_identity: DeviceIdentity) -> None:
    link = _connected(p384_identity)
    with pytest.raises(ErrorResponse) as exc:
        link.run(link.requester.get_certificate(5))
    assert exc.value.code == ErrorCode.INVALID_REQUEST


def test_key_update_rules(p384_identity: DeviceIdentity) -> None:
    from spdm.codes import KEY_UPDATE_UPDATE_KEY, KEY_UPDATE_VERIFY_NEW_KEY

    link, sid = _session_link(p384_identity)
    # VerifyNewKey with no update before it.
    assert _err(_send_secured(link, sid, bytes([V, Req.KEY_UPDATE, 3, 9]))) == \
        ErrorCode.INVALID_REQUEST
    link.run(link.requester.key_update(sid, KEY_UPDATE_UPDATE_KEY, verify=False))
    # A second update before the first was verified.
    assert _err(_send_secured(link, sid, bytes([V, Req.KEY_UPDATE, 1, 7]))) == \
        ErrorCode.INVALID_REQUEST
    link.run(link.requester.key_update(sid, KEY_UPDATE_VERIFY_NEW_KEY))
    # Sequence numbers restart with the new keys.
    assert link.responder.sessions[sid].req_prot.seq == 2  # type: ignore[union-attr]


def test_old_key_rejected_after_update(p384_identity: DeviceIdentity) -> None:
    import copy

    link, sid = _session_link(p384_identity)
    stale = copy.deepcopy(link.requester.sessions[sid])
    link.run(link.requester.key_update(sid))
    rec = stale.seal(bytes([V, Req.HEARTBEAT, 0, 0]), from_requester=True)
    kind, reply = link.responder.handle_doe(2, rec)
    assert kind == 1 and _err(reply) == ErrorCode.DECRYPT_ERROR
