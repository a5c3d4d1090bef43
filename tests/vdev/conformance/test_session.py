"""Sessions on every shipped profile in every DSP0274 1.1-1.3 version it offers:
KEY_EXCHANGE_RSP, FINISH_RSP, PSK_EXCHANGE_RSP, PSK_FINISH_RSP, HEARTBEAT_ACK,
KEY_UPDATE_ACK and END_SESSION_ACK read field by field from DSP0274's tables, and the
ERRORs for session requests out of place, reserved KeyOperation values, requests not
allowed in a session (DSP0274 1.3 Table 6, "allowed in session" column) and a record
that fails authentication (DSP0277 §6, ERROR DecryptError).

Our requester drives the handshakes (the key schedule is not what is judged here);
the device's plaintext inside the session is read through the responder's message
observer, so every response below is the device's own bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from spdm.codes import KEY_UPDATE_UPDATE_ALL_KEYS, KEY_UPDATE_UPDATE_KEY, KEY_UPDATE_VERIFY_NEW_KEY
from tests.vdev.conformance import wire as w

CASES = [(p, v) for p, v in w.judged_cases() if v >= w.V11]
IDS = w.case_ids(CASES)


class Observed:
    """The plaintext SPDM messages inside sessions, as the device saw and sent them."""

    def __init__(self, c: w.Conn) -> None:
        self.pairs: list[tuple[bytes, bytes]] = []
        self._req = b""
        c.device.responder.hooks.message_observer = self._see

    def _see(self, direction: str, _sid: int, msg: bytes) -> None:
        if direction == "request":
            self._req = msg
        else:
            self.pairs.append((self._req, msg))

    def response_to(self, code: int) -> tuple[bytes, bytes]:
        return next(p for p in reversed(self.pairs) if p[0][1] == code)


def plain(c: w.Conn, code: int) -> tuple[bytes, bytes]:
    """The last plaintext (DOE type 1) request with this code and its response."""
    return next((d, r) for t, d, r in reversed(c.log) if t == 1 and d[1] == code)


def negotiated(c: w.Conn) -> w.Algs:
    return w.parse_algorithms(plain(c, w.NEGOTIATE_ALGORITHMS)[1])


def caps_of(c: w.Conn) -> int:
    return w.parse_capabilities(plain(c, w.GET_CAPABILITIES)[1]).flags


def start(state_root: Path, profile: str, version: int) -> tuple[w.Conn, Observed, int]:
    c = w.Conn(w.profile_device(profile, state_root), version)
    seen = Observed(c)
    req = c.requester()
    c.run(req.init_connection())
    return c, seen, caps_of(c)


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_key_exchange_session(state_root: Path, profile: str, version: int) -> None:
    c, seen, flags = start(state_root, profile, version)
    if not flags & w.KEY_EX:
        pytest.skip("KEY_EX_CAP is 0 (refusal: test_sessionless_device)")
    req = c.req
    assert req is not None
    c.run(req.get_digests())
    c.run(req.get_certificate(0))
    sid = c.run(req.key_exchange())
    a = negotiated(c)
    sent, resp = plain(c, w.KEY_EXCHANGE)
    # KEY_EXCHANGE_RSP (DSP0274 1.3 Table 63): Param1 HeartbeatPeriod, Param2 Reserved,
    # RspSessionID u16, MutAuthRequested, ReqSlotIDParam, RandomData 32, ExchangeData
    # (the DHE group's size), MeasurementSummaryHash (none asked: 0 bytes),
    # OpaqueDataLength u16, OpaqueData, Signature, ResponderVerifyData (H bytes, absent
    # when both sides set HANDSHAKE_IN_THE_CLEAR_CAP).
    assert resp[:2] == bytes([version, 0x64]), resp.hex()
    period = c.profile.spdm_heartbeat_period if flags & w.HBEAT else 0
    assert resp[2] == period and resp[3] == 0
    rsp_sid = struct.unpack_from("<H", resp, 4)[0]
    assert sid == struct.unpack_from("<H", sent, 4)[0] | rsp_sid << 16
    assert resp[6] == 0 and resp[7] == 0  # no mutual authentication asked
    d = w.DHE_SIZE[w.bits(a.selected(w.ALG_DHE))[0]]
    off = 8 + 32 + d
    opaque = struct.unpack_from("<H", resp, off)[0]
    assert opaque <= 1024
    off += 2 + opaque
    assert len(resp) == off + a.sig + a.h
    # FINISH_RSP (Table 66): header only, unless the handshake is in the clear.
    assert seen.response_to(w.FINISH)[1] == bytes([version, 0x65, 0, 0])
    _session_messages(c, seen, sid, version, flags)


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_psk_session(state_root: Path, profile: str, version: int) -> None:
    c, seen, flags = start(state_root, profile, version)
    if not flags & w.PSK_MASK:
        pytest.skip("PSK_CAP is 0")
    req = c.req
    assert req is not None
    hint = next(iter(c.profile.spdm_psk_table))
    sid = c.run(req.psk_exchange(hint))
    a = negotiated(c)
    sent, resp = plain(c, w.PSK_EXCHANGE)
    # PSK_EXCHANGE_RSP (Table 68): Param1 HeartbeatPeriod, Param2 Reserved, RspSessionID
    # u16, Reserved u16, ResponderContextLength u16, OpaqueDataLength u16,
    # MeasurementSummaryHash (0 here), ResponderContext, OpaqueData, ResponderVerifyData.
    assert resp[:2] == bytes([version, 0x66]), resp.hex()
    period = c.profile.spdm_heartbeat_period if flags & w.HBEAT else 0
    assert resp[2] == period and resp[3] == 0
    rsp_sid, reserved, ctx_len, opaque = struct.unpack_from("<HHHH", resp, 4)
    assert sid == struct.unpack_from("<H", sent, 4)[0] | rsp_sid << 16 and reserved == 0
    with_context = flags & w.PSK_MASK == w.PSK_WITH_CONTEXT
    # ResponderContext: none with PSK_CAP 01b; with 10b at least H bytes (Table 68).
    assert ctx_len >= a.h if with_context else ctx_len == 0
    assert len(resp) == 12 + ctx_len + opaque + a.h
    if with_context:
        # PSK_FINISH_RSP (Table 70): header only.
        assert seen.response_to(w.PSK_FINISH)[1] == bytes([version, 0x67, 0, 0])
    _session_messages(c, seen, sid, version, flags)


def _session_messages(c: w.Conn, seen: Observed, sid: int, version: int, flags: int) -> None:
    req = c.req
    assert req is not None
    # HEARTBEAT_ACK (Table 72): header only.
    if flags & w.HBEAT:
        c.run(req.heartbeat(sid))
        assert seen.response_to(w.HEARTBEAT)[1] == bytes([version, 0x68, 0, 0])
    else:
        err = w.parse_error(c.in_session(sid, bytes([version, w.HEARTBEAT, 0, 0])))
        assert (err.code, err.data) == (w.UNSUPPORTED_REQUEST, w.HEARTBEAT)
    # Requests not allowed in a session (Table 6): UnexpectedRequest, in the session.
    refused = {
        "GET_CAPABILITIES": w.get_capabilities(version),
        "NEGOTIATE_ALGORITHMS": w.negotiate_algorithms(version),
        "CHALLENGE": bytes([version, w.CHALLENGE, 0, 0]) + bytes(32)
        + (bytes(8) if version >= w.V13 else b""),
    }
    for name, msg in refused.items():
        err = w.parse_error(c.in_session(sid, msg))
        assert (name, err.version, err.code, err.data) == (
            name, version, w.UNEXPECTED_REQUEST, 0)
    if flags & w.KEY_UPD:
        # KEY_UPDATE KeyOperation 0 and 4-255 are Reserved (Table 75): InvalidRequest.
        for op in (0, 4, 0xFF):
            err = w.parse_error(c.in_session(sid, bytes([version, w.KEY_UPDATE, op, 7])))
            assert (op, err.version, err.code, err.data) == (op, version, w.INVALID_REQUEST, 0)
        # KEY_UPDATE_ACK (Table 76): Param1 KeyOperation and Param2 Tag echoed.
        for op in (KEY_UPDATE_UPDATE_KEY, KEY_UPDATE_UPDATE_ALL_KEYS):
            before = len(seen.pairs)
            c.run(req.key_update(sid, op))
            # The update, then VerifyNewKey under the new keys: both acknowledged.
            (upd, upd_ack), (verify, verify_ack) = seen.pairs[before:]
            assert upd[1:3] == bytes([w.KEY_UPDATE, op])
            assert upd_ack == bytes([version, 0x69, op, upd[3]])
            assert verify[1:3] == bytes([w.KEY_UPDATE, KEY_UPDATE_VERIFY_NEW_KEY])
            assert verify_ack == bytes([version, 0x69, KEY_UPDATE_VERIFY_NEW_KEY, verify[3]])
    else:
        err = w.parse_error(c.in_session(sid, bytes([version, w.KEY_UPDATE, 1, 7])))
        assert (err.code, err.data) == (w.UNSUPPORTED_REQUEST, w.KEY_UPDATE)
    # END_SESSION_ACK (Table 78): header only.
    c.run(req.end_session(sid))
    assert seen.response_to(w.END_SESSION)[1] == bytes([version, 0x6C, 0, 0])


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_session_requests_outside_a_session(state_root: Path, profile: str,
                                            version: int) -> None:
    """HEARTBEAT, KEY_UPDATE and END_SESSION need a session: from 1.2 SessionRequired
    (Table 58, 0x0B), in 1.1 (which has no such code) UnexpectedRequest.  A device that
    does not advertise the request's capability answers UnsupportedRequest with the
    request code, whatever the transport."""
    c = w.Conn(w.profile_device(profile, state_root), version)
    c.vca()
    sessions = c.flags & (w.KEY_EX | w.PSK_MASK)
    for code, cap in ((w.HEARTBEAT, w.HBEAT), (w.KEY_UPDATE, w.KEY_UPD),
                      (w.END_SESSION, w.KEY_EX | w.PSK_MASK)):
        err = w.parse_error(c.send(bytes([version, code, 1, 0])))
        if not sessions or not c.flags & cap:
            want = (w.UNSUPPORTED_REQUEST, code)
        else:
            want = (w.SESSION_REQUIRED if version >= w.V12 else w.UNEXPECTED_REQUEST, 0)
        assert (code, err.version, err.code, err.data) == (code, version, *want)


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_sessionless_device(state_root: Path, profile: str, version: int) -> None:
    """KEY_EXCHANGE and PSK_EXCHANGE without KEY_EX_CAP / PSK_CAP: UnsupportedRequest,
    ErrorData the request code (Table 58)."""
    c = w.Conn(w.profile_device(profile, state_root), version)
    c.vca()
    for code, cap in ((w.KEY_EXCHANGE, w.KEY_EX), (w.PSK_EXCHANGE, w.PSK_MASK)):
        if c.flags & cap:
            continue
        err = w.parse_error(c.send(bytes([version, code, 0, 0]) + bytes(200)))
        assert (err.version, err.code, err.data) == (version, w.UNSUPPORTED_REQUEST, code)


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_record_failing_authentication(state_root: Path, profile: str, version: int) -> None:
    """DSP0277 §6 / DSP0274 1.3 Table 58: a record whose MAC does not verify gets ERROR
    DecryptError (plaintext, ErrorData 0) and the session is over."""
    c, _seen, flags = start(state_root, profile, version)
    req = c.req
    assert req is not None
    if flags & w.KEY_EX:
        c.run(req.get_digests())
        c.run(req.get_certificate(0))
        sid = c.run(req.key_exchange())
    elif flags & w.PSK_MASK:
        sid = c.run(req.psk_exchange(next(iter(c.profile.spdm_psk_table))))
    else:
        pytest.skip("no session")
    record = bytearray(req.sessions[sid].seal(bytes([version, w.HEARTBEAT, 0, 0]),
                                              from_requester=True))
    record[-1] ^= 1
    kind, reply = c.device.spdm_message(2, bytes(record))
    err = w.parse_error(reply)
    assert (kind, err.version, err.code, err.data) == (1, version, w.DECRYPT_ERROR, 0)
    assert sid not in c.device.responder.sessions
