"""DSP0277 secured messages on every shipped profile that offers sessions, in every
DSP0274 1.1-1.3 version it offers, with KEY_EXCHANGE and with PSK_EXCHANGE where the
profile provisions a PSK.

Our requester opens the session (its DHE secret is taken from the secret hook); from
there on everything is by hand (tests/vdev/conformance/dsp0277.py): the key schedule from
the transcript of the bytes on the wire, checked against the device's ResponderVerifyData;
the handshake records (FINISH / PSK_FINISH) opened with the handshake keys; then every
application record built and read with `cryptography`'s AEAD:

  - layout: SessionID, Length, ApplicationDataLength, MAC; the implicit sequence number
    of each direction counting from 0 (PCI DOE carries none);
  - a record whose MAC, cipher text or header (the AAD) was altered, a replayed record,
    records out of order, a truncated record: ERROR DecryptError in the clear and the
    session is over (DSP0274 ERROR DecryptError, DSP0277 "Secured message");
  - a record naming a session that does not exist: refused in the clear, and the session
    it was made for goes on;
  - KEY_UPDATE (DSP0274 KEY_UPDATE): UpdateKey, a retry of it under the old key (the ACK
    may have been lost, so the Responder still accepts the old key until the new one is
    used), VerifyNewKey, UpdateAllKeys with its ACK under the new response key, and the
    old key refused once the new one is verified;
  - END_SESSION: END_SESSION_ACK in the session, then the session is gone.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vdev.conformance import dsp0277 as s
from tests.vdev.conformance import wire as w

SECURED = 2  # DOE data object type of a secured SPDM message (PCIe 6.x CMA)
KINDS = ("key_exchange", "psk")
CASES = [(p, v, k) for p, v in w.judged_cases() if v >= w.V11 for k in KINDS]
IDS = [f"{i}-{k}" for i, (_p, _v, k) in zip(w.case_ids([(p, v) for p, v, _ in CASES]),
                                            CASES, strict=True)]
HEARTBEAT_ACK, KEY_UPDATE_ACK, END_SESSION_ACK = 0x68, 0x69, 0x6C
UPDATE_KEY, UPDATE_ALL_KEYS, VERIFY_NEW_KEY = 1, 2, 3


@dataclass
class Session:
    c: w.Conn
    version: int
    sid: int
    flags: int
    keys: s.KeySchedule
    req: s.Direction
    rsp: s.Direction

    @property
    def aead(self) -> int:
        return self.keys.aead_bit

    def send(self, record: bytes) -> tuple[int, bytes]:
        kind, reply = self.c.device.spdm_message(SECURED, record)
        return kind, reply

    def seal(self, msg: bytes, d: s.Direction | None = None) -> bytes:
        return s.seal(self.aead, d or self.req, self.sid, msg)

    def exchange(self, msg: bytes, *, req: s.Direction | None = None,
                 rsp: s.Direction | None = None) -> bytes:
        kind, reply = self.send(self.seal(msg, req))
        assert kind == SECURED, f"answered in the clear: {reply.hex()}"
        return s.open_record(self.aead, rsp or self.rsp, self.sid, reply)

    def heartbeat(self) -> bytes:
        return bytes([self.version, w.HEARTBEAT, 0, 0])

    def refused_in_clear(self, record: bytes) -> w.Err:
        kind, reply = self.send(record)
        assert kind == 1, "an ERROR about a record the device cannot open is in the clear"
        err = w.parse_error(reply)
        assert err.version == self.version
        return err

    def heartbeat_answered(self, msg: bytes) -> None:
        """HEARTBEAT_ACK (Table 79), or UnsupportedRequest without HBEAT_CAP."""
        if self.flags & w.HBEAT:
            assert msg == bytes([self.version, HEARTBEAT_ACK, 0, 0]), msg.hex()
        else:
            err = w.parse_error(msg)
            assert (err.code, err.data) == (w.UNSUPPORTED_REQUEST, w.HEARTBEAT)

    def assert_over(self) -> None:
        """A well-formed record at the next sequence number is refused in the clear: the
        session is gone."""
        self.refused_in_clear(self.seal(self.heartbeat()))
        assert self.sid not in self.c.device.responder.sessions


def entries(c: w.Conn, code: int) -> list[tuple[int, bytes, bytes]]:
    return [e for e in c.log if e[0] == 1 and e[1][1] == code]


def establish(state_root: Path, profile: str, version: int, kind: str) -> Session:
    c = w.Conn(w.profile_device(profile, state_root), version)
    req = c.requester()
    dhe: list[bytes] = []
    req.hooks.secret_sink = lambda label, secret: dhe.append(secret) \
        if label == "DHE Secret" else None
    c.run(req.init_connection())
    caps = w.parse_capabilities(entries(c, w.GET_CAPABILITIES)[-1][2])
    a = w.parse_algorithms(entries(c, w.NEGOTIATE_ALGORITHMS)[-1][2])
    flags = caps.flags
    if not flags & (w.ENCRYPT | w.MAC):
        pytest.skip("no session")
    assert flags & w.ENCRYPT and flags & w.MAC, "every profile's sessions encrypt"
    vca = b"".join(e[1] + e[2] for code in (w.GET_VERSION, w.GET_CAPABILITIES,
                                             w.NEGOTIATE_ALGORITHMS)
                   for e in entries(c, code)[-1:])
    h = a.h
    if kind == "key_exchange":
        if not flags & w.KEY_EX:
            pytest.skip("KEY_EX_CAP is 0")
        c.run(req.get_digests())
        c.run(req.get_certificate(0))
        sid = c.run(req.key_exchange())
        # The certificate chain from the CERTIFICATE portions (Table 40: PortionLength at
        # 4, CertChain at 8); the transcript has its hash.
        chain = b"".join(e[2][8:8 + struct.unpack_from("<H", e[2], 4)[0]]
                         for e in entries(c, w.GET_CERTIFICATE))
        prefix = vca + s.digest(a.base_hash, chain)
        exchange_code = w.KEY_EXCHANGE
        shared = dhe[-1]
    else:
        if not flags & w.PSK_MASK:
            pytest.skip("PSK_CAP is 0")
        hint, psk = next(iter(c.profile.spdm_psk_table.items()))
        sid = c.run(req.psk_exchange(hint))
        prefix = vca
        exchange_code = w.PSK_EXCHANGE
        shared = psk
    [exchange] = entries(c, exchange_code)
    _t, ex_req, ex_rsp = exchange
    # What followed: FINISH / PSK_FINISH (a record, or in the clear with
    # HANDSHAKE_IN_THE_CLEAR), or nothing for a PSK_CAP 01b session.
    after = c.log[c.log.index(exchange) + 1:]
    finish_type, finish, finish_reply = after[0] if after else (0, b"", b"")
    in_clear = finish_type == 1
    keys = s.KeySchedule(version, a.base_hash, a.selected(w.ALG_AEAD), shared,
                         psk=kind == "psk")
    # ResponderVerifyData: HMAC(finished_key, Hash(transcript up to the response without
    # it)) (DSP0274 1.3 Tables 71 and 75); TH1 is that transcript's hash.
    th1_msgs = prefix + ex_req + (ex_rsp if in_clear else ex_rsp[:-h])
    req_hs, rsp_hs = keys.handshake(s.digest(a.base_hash, th1_msgs))
    if not in_clear:
        assert ex_rsp[-h:] == s.hmac(a.base_hash, keys.finished_key(rsp_hs),
                                     s.digest(a.base_hash, th1_msgs)), \
            "ResponderVerifyData is not the spec's HMAC over TH1"
    transcript = prefix + ex_req + ex_rsp
    if finish_type:
        # FINISH / PSK_FINISH and the response, opened with the handshake keys.
        if in_clear:
            fin, fin_rsp = finish, finish_reply
        else:
            fin = s.open_record(keys.aead_bit, req_hs, sid, finish)
            fin_rsp = s.open_record(keys.aead_bit, rsp_hs, sid, finish_reply)
        assert fin[1] in (w.FINISH, w.PSK_FINISH) and fin_rsp[1] in (0x65, 0x67)
        if not in_clear:  # RequesterVerifyData over the transcript through FINISH's header
            assert fin[-h:] == s.hmac(a.base_hash, keys.finished_key(req_hs),
                                      s.digest(a.base_hash, transcript + fin[:-h]))
        transcript += fin + fin_rsp
    req_app, rsp_app = keys.application(s.digest(a.base_hash, transcript))
    return Session(c, version, sid, flags, keys, req_app, rsp_app)


@pytest.mark.parametrize(("profile", "version", "kind"), CASES, ids=IDS)
def test_application_records(state_root: Path, profile: str, version: int,
                             kind: str) -> None:
    t = establish(state_root, profile, version, kind)
    for seq in (0, 1, 2):
        record = t.seal(t.heartbeat())
        assert struct.unpack_from("<IH", record) == (t.sid, len(record) - 6)
        kind_, reply = t.send(record)
        assert kind_ == SECURED
        # The response: this session's ID, Length over the rest, sequence number `seq`
        # of the response direction (open_record checks each).
        assert t.rsp.seq == seq
        t.heartbeat_answered(s.open_record(t.aead, t.rsp, t.sid, reply))


def _altered_mac(t: Session) -> bytes:
    record = bytearray(t.seal(t.heartbeat()))
    record[-1] ^= 0x01
    return bytes(record)


def _altered_cipher_text(t: Session) -> bytes:
    record = bytearray(t.seal(t.heartbeat()))
    record[s.HEADER_SIZE] ^= 0x80
    return bytes(record)


def _altered_header(t: Session) -> bytes:
    """The AAD covers the header: a record made for another session ID (that exists
    nowhere) with this session's ID put back fails authentication."""
    record = bytearray(s.seal(t.aead, t.req, t.sid ^ 0x0001_0000, t.heartbeat()))
    record[0:4] = struct.pack("<I", t.sid)
    return bytes(record)


def _replayed(t: Session) -> bytes:
    record = t.seal(t.heartbeat())
    assert t.send(record)[0] == SECURED
    t.rsp.seq += 1
    return record


def _out_of_order(t: Session) -> bytes:
    t.seal(t.heartbeat())  # sequence number 0 made, never sent
    return t.seal(t.heartbeat())


def _truncated(t: Session) -> bytes:
    record = t.seal(bytes([t.version, w.END_SESSION, 0, 0]))
    return record[:-4]


def _short_length(t: Session) -> bytes:
    record = bytearray(t.seal(t.heartbeat()))
    length = struct.unpack_from("<H", record, 4)[0]
    record[4:6] = struct.pack("<H", length - 1)
    return bytes(record)


FAILURES: dict[str, Callable[[Session], bytes]] = {
    "mac": _altered_mac, "cipher_text": _altered_cipher_text, "aad": _altered_header,
    "replay": _replayed, "out_of_order": _out_of_order, "truncated": _truncated,
    "length": _short_length,
}


@pytest.mark.parametrize(("profile", "version", "kind"), CASES, ids=IDS)
def test_records_that_do_not_authenticate(state_root: Path, profile: str, version: int,
                                          kind: str) -> None:
    for name, make in FAILURES.items():
        t = establish(state_root, profile, version, kind)
        err = t.refused_in_clear(make(t))
        assert (name, err.code, err.data) == (name, w.DECRYPT_ERROR, 0)
        t.assert_over()


@pytest.mark.parametrize(("profile", "version", "kind"), CASES, ids=IDS)
def test_record_for_an_unknown_session(state_root: Path, profile: str, version: int,
                                       kind: str) -> None:
    t = establish(state_root, profile, version, kind)
    other = t.sid ^ 0x0001_0000
    record = s.seal(t.aead, t.req, other, t.heartbeat(), seq=0)
    err = t.refused_in_clear(record)
    assert err.code != w.DECRYPT_ERROR, "no session's keys were tried"
    # The session the keys belong to did not see it: sequence number 0 is still next.
    t.heartbeat_answered(t.exchange(t.heartbeat()))


@pytest.mark.parametrize(("profile", "version", "kind"), CASES, ids=IDS)
def test_key_update(state_root: Path, profile: str, version: int, kind: str) -> None:
    t = establish(state_root, profile, version, kind)
    if not t.flags & w.KEY_UPD:
        pytest.skip("KEY_UPD_CAP is 0")

    def key_update(op: int, tag: int, req: s.Direction, rsp: s.Direction) -> None:
        ack = t.exchange(bytes([version, w.KEY_UPDATE, op, tag]), req=req, rsp=rsp)
        assert ack == bytes([version, KEY_UPDATE_ACK, op, tag])  # Table 81: both echoed

    # UpdateKey: the request direction only; the ACK still under the current response key.
    old_req = t.req
    key_update(UPDATE_KEY, 0x11, old_req, t.rsp)
    new_req = t.keys.updated(old_req)
    # The ACK may be lost: the Requester retries under the old key, which the Responder
    # still accepts until the new key has been used.
    key_update(UPDATE_KEY, 0x11, old_req, t.rsp)
    key_update(VERIFY_NEW_KEY, 0x12, new_req, t.rsp)
    t.heartbeat_answered(t.exchange(t.heartbeat(), req=new_req))
    # The old request key is retired now.
    stale = s.seal(t.aead, old_req, t.sid, t.heartbeat())
    # UpdateAllKeys: both directions; the ACK comes under the new response key (libspdm,
    # DMTF's reference implementation, switches the response key before the ACK).
    new_rsp = t.keys.updated(t.rsp)
    key_update(UPDATE_ALL_KEYS, 0x13, new_req, new_rsp)
    newer_req = t.keys.updated(new_req)
    key_update(VERIFY_NEW_KEY, 0x14, newer_req, new_rsp)
    t.heartbeat_answered(t.exchange(t.heartbeat(), req=newer_req, rsp=new_rsp))
    err = t.refused_in_clear(stale)
    assert (err.code, err.data) == (w.DECRYPT_ERROR, 0)
    assert t.sid not in t.c.device.responder.sessions


@pytest.mark.parametrize(("profile", "version", "kind"), CASES, ids=IDS)
def test_end_session(state_root: Path, profile: str, version: int, kind: str) -> None:
    t = establish(state_root, profile, version, kind)
    # END_SESSION_ACK (Table 89): header only, in the session it ends.
    assert t.exchange(bytes([version, w.END_SESSION, 0, 0])) == bytes(
        [version, END_SESSION_ACK, 0, 0])
    t.assert_over()
