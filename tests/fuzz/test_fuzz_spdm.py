"""SPDM responder: every request of a real transcript, mutated, in and out of a session.

Stronger than tests/spdm/test_spdm_fuzz.py (which checks "no crash, >= 4 bytes"): here
a mutated request must get an SPDM ERROR or the response that belongs to its request
code, and right after it the same responder must serve a correct flow (a fresh
connection, a session, a heartbeat in it).  The secured-message layer is fuzzed at the
record level too: corrupted records get a plain ERROR (DecryptError / SessionRequired /
InvalidRequest) and never a crash.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from spdm.codes import Req, Rsp
from spdm.errors import RecordError
from spdm.secured_message import decode_record, peek_session_id
from tests.fuzz.budget import examples
from tests.fuzz.mutations import damaged
from tests.helpers.spdm_harness import Link, identity_for, make_link


def _damaged(msg: bytes) -> st.SearchStrategy[bytes]:
    return damaged(msg, header=4, extend=40, byte_weight=2)


VERSIONS = (0x11, 0x12, 0x13)


def _link(version: int) -> Link:
    return make_link(identity_for("ecdsa-p256"), rsp={"data_transfer_size": 256},
                     req={"versions": (version,)})


def _recorded(version: int) -> list[bytes]:
    """Plain requests of a full flow: VCA, DIGESTS, CERTIFICATE, CHALLENGE, MEASUREMENTS
    (signed and not), KEY_EXCHANGE, PSK_EXCHANGE.  FINISH travels secured, so a replay
    stops at the key exchange."""
    link = _link(version)
    link.connect()
    r = link.requester
    link.run(r.challenge(0, 0xFF))
    link.run(r.get_measurements(0xFF))
    link.run(r.get_measurements(1, signed=False))
    link.session(meas_summary=1)
    link.run(r.psk_exchange(b"hint"))
    return [req for kind, req, _ in link.log if kind == 1]


TRANSCRIPTS = {v: _recorded(v) for v in VERSIONS}


def _in_session(version: int) -> list[bytes]:
    v = version
    return [
        bytes([v, Req.HEARTBEAT, 0, 0]),
        bytes([v, Req.GET_MEASUREMENTS, 1, 0xFF]) + bytes(32) + b"\x00"
        + (bytes(8) if v >= 0x13 else b""),
        bytes([v, Req.GET_MEASUREMENTS, 0, 1]),
        bytes([v, Req.GET_DIGESTS, 0, 0]),
        bytes([v, Req.GET_CERTIFICATE, 0, 0, 0, 0, 0x40, 0x00]),
        bytes([v, Req.VENDOR_DEFINED_REQUEST, 0, 0, 3, 2, 1, 0, 3, 0, 0, 0, 0]),
        bytes([v, Req.KEY_UPDATE, 1, 5]),
        bytes([v, Req.END_SESSION, 0, 0]),
        bytes([v, Req.GET_VERSION, 0, 0]),
    ]




def _check_response(req: bytes, resp: bytes) -> None:
    assert len(resp) >= 4, (req.hex(), resp.hex())
    # 1.4 too: a mutated version byte can select it, and the device speaks 1.4.
    assert resp[0] in (0x10, 0x11, 0x12, 0x13, 0x14)
    if len(req) >= 2 and req[1] == Req.RESPOND_IF_READY:
        return  # answers for whatever was pending
    expected = req[1] & 0x7F if len(req) >= 2 else None
    assert resp[1] in (Rsp.ERROR, expected), (req.hex(), resp.hex())


def _serves_a_correct_flow(link: Link) -> None:
    link.connect()
    sid = link.session()
    link.run(link.requester.heartbeat(sid))


@examples(120)
@given(st.sampled_from(VERSIONS), st.data())
def test_mutated_plain_request_gets_error_or_its_response(version: int, data: st.DataObject
                                                          ) -> None:
    flow = TRANSCRIPTS[version]
    which = data.draw(st.integers(0, len(flow) - 1), label="which")
    mutated = data.draw(_damaged(flow[which]), label="mutated")
    link = _link(version)
    for req in flow[:which]:
        assert link.responder.handle(req)[1] != Rsp.ERROR
    _check_response(mutated, link.responder.handle(mutated))
    _serves_a_correct_flow(link)


@examples(120)
@given(st.sampled_from((0x12, 0x13)), st.data())
def test_mutated_request_in_a_session(version: int, data: st.DataObject) -> None:
    msgs = _in_session(version)
    which = data.draw(st.integers(0, len(msgs) - 1), label="which")
    mutated = data.draw(_damaged(msgs[which]), label="mutated")
    link = _link(version)
    link.connect()
    sid = link.session()
    sess = link.requester.sessions[sid]
    kind, reply = link.responder.handle_doe(2, sess.seal(mutated, from_requester=True))
    if kind == 1:
        assert reply[1] == Rsp.ERROR
    else:
        try:
            inner = sess.open(reply, from_requester=False)
        except RecordError:
            # An accepted UpdateAllKeys is answered under the new response key.
            assert mutated[1:3] == bytes([Req.KEY_UPDATE, 2]), mutated.hex()
            sess.update_rsp_keys()
            inner = sess.open(reply, from_requester=False)
        _check_response(mutated, inner)
    # Whatever the mutated request did (KEY_UPDATE, END_SESSION, GET_VERSION in a
    # session), a fresh connection and session still work.
    link.requester = _link(version).requester
    _serves_a_correct_flow(link)


@examples(120)
@given(st.data())
def test_corrupted_records(data: st.DataObject) -> None:
    link = _link(0x13)
    link.connect()
    sid = link.session()
    sess = link.requester.sessions[sid]
    record = sess.seal(bytes([0x13, Req.HEARTBEAT, 0, 0]), from_requester=True)
    bad = data.draw(st.one_of(_damaged(record), st.binary(max_size=40)), label="record")
    kind, reply = link.responder.handle_doe(2, bad)
    if bad == record:
        assert kind == 2
    elif kind == 1:
        assert reply[1] == Rsp.ERROR  # DecryptError, SessionRequired, InvalidRequest
    else:
        # Only a record that still authenticates gets a secured answer.
        _check_response(sess.open(reply, from_requester=False)[:4], b"\x13\x68\x00\x00")
    link.requester = _link(0x13).requester
    _serves_a_correct_flow(link)


@examples(200)
@given(st.binary(max_size=64))
def test_record_decoders_raise_only_record_error(raw: bytes) -> None:
    link = _link(0x13)
    link.connect()
    sid = link.session()
    sess = link.requester.sessions[sid]
    for fn in (lambda: peek_session_id(raw),
               lambda: sess.open(raw, from_requester=False),
               lambda: decode_record(sess.rsp_prot, sid, raw)  # type: ignore[arg-type]
               ):
        with contextlib.suppress(RecordError):
            fn()
