"""Property tests: arbitrary input never crashes the responder or wedges it."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spdm.codes import Req
from tests.helpers.spdm_harness import identity_for, make_link

CODES = [int(c) for c in Req] + [0x00, 0x04, 0x7F, 0xF5]
MUTATIONS = int(os.environ.get("SPDM_FUZZ_MUTATIONS", "300"))


def _message() -> st.SearchStrategy[bytes]:
    head = st.tuples(st.sampled_from([0x10, 0x11, 0x12, 0x13, 0x14]), st.sampled_from(CODES),
                     st.integers(0, 255), st.integers(0, 255))
    return st.builds(lambda h, body: bytes(h) + body, head, st.binary(max_size=200))


LINKS: dict[int, object] = {}


def _link(version: int = 0x13):  # type: ignore[no-untyped-def]
    if version not in LINKS:
        link = make_link(identity_for("ecdsa-p256"), rsp={"data_transfer_size": 256},
                         req={"versions": (version,)})
        link.connect()
        LINKS[version] = link
    return LINKS[version]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([0x10, 0x11, 0x12, 0x13]), st.lists(
    st.tuples(st.sampled_from(CODES), st.integers(0, 255), st.integers(0, 255),
              st.binary(max_size=120)), min_size=1, max_size=4))
def test_plain_requests_never_crash(version: int,
                                    msgs: list[tuple[int, int, int, bytes]]) -> None:
    link = _link(version)
    for code, p1, p2, body in msgs:
        resp = link.responder.handle(bytes([version, code, p1, p2]) + body)
        assert len(resp) >= 4 and resp[0] in (0x10, 0x11, 0x12, 0x13)
    # Whatever happened, a fresh connection works.
    link.connect()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), min_size=1, max_size=4))
def test_random_headers_never_crash(msgs: list[bytes]) -> None:
    link = _link()
    for msg in msgs:
        resp = link.responder.handle(msg)
        assert len(resp) >= 4
    link.connect()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), min_size=1, max_size=3), st.binary(max_size=64))
def test_secured_requests_never_crash(msgs: list[bytes], junk: bytes) -> None:
    link = _link()
    sid = link.session()
    sess = link.requester.sessions[sid]
    for msg in msgs:
        kind, reply = link.responder.handle_doe(2, sess.seal(msg, from_requester=True))
        if kind == 2:
            inner = sess.open(reply, from_requester=False)
            assert len(inner) >= 4
        else:
            break  # session terminated (e.g. GET_VERSION-free path dropped it)
    kind, reply = link.responder.handle_doe(2, junk)
    assert kind in (1, 2)
    link.connect()


def _recorded_plain_flow(version: int) -> list[bytes]:
    link = make_link(identity_for("ecdsa-p256"), req={"versions": (version,)})
    link.connect()
    link.run(link.requester.challenge())
    link.run(link.requester.get_measurements())
    link.run(link.requester.get_measurements(2, signed=False))
    if version >= 0x11:
        link.session()
        link.run(link.requester.psk_exchange(b"hint"))
    return [req for kind, req, _ in link.log if kind == 1]


FLOWS = {v: _recorded_plain_flow(v) for v in (0x10, 0x11, 0x12, 0x13)}


@settings(max_examples=MUTATIONS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FLOWS)), st.integers(0, 100), st.integers(0, 400),
       st.integers(0, 255), st.booleans())
def test_mutated_flow_never_crashes(version: int, which: int, pos: int, value: int,
                                    truncate: bool) -> None:
    flow = FLOWS[version]
    which %= len(flow)
    link = make_link(identity_for("ecdsa-p256"), req={"versions": (version,)})
    for i, req in enumerate(flow):
        if i == which:
            if truncate:
                req = req[: pos % (len(req) + 1)]
            else:
                b = bytearray(req)
                b[pos % len(b)] = value
                req = bytes(b)
        resp = link.responder.handle(req)
        assert len(resp) >= 4
    link.connect()


def _in_session_messages(version: int) -> list[bytes]:
    v = version
    return [
        bytes([v, 0xE8, 0, 0]),  # HEARTBEAT
        bytes([v, 0xE0, 1, 0xFF]) + bytes(32) + b"\x00" + (bytes(8) if v >= 0x13 else b""),
        bytes([v, 0x81, 0, 0]),  # GET_DIGESTS
        bytes([v, 0x82, 0, 0, 0, 0, 0x00, 0x01]),  # GET_CERTIFICATE
        bytes([v, 0xFE, 0, 0, 3, 0, 2, 1, 0, 1, 0, 0]),  # VENDOR_DEFINED
        bytes([v, 0xE9, 1, 5]),  # KEY_UPDATE
        bytes([v, 0xE9, 3, 6]),  # VERIFY_NEW_KEY
        bytes([v, 0xEC, 0, 0]),  # END_SESSION
    ]


@settings(max_examples=MUTATIONS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([0x12, 0x13]), st.integers(0, 7), st.integers(0, 60),
       st.integers(0, 255), st.booleans())
def test_mutated_session_messages_never_crash(version: int, which: int, pos: int, value: int,
                                              truncate: bool) -> None:
    link = _link(version)
    link.connect()
    sid = link.session()
    sess = link.requester.sessions[sid]
    for i, msg in enumerate(_in_session_messages(version)):
        if i == which:
            msg = msg[: pos % (len(msg) + 1)] if truncate else (
                msg[: pos % len(msg)] + bytes([value]) + msg[pos % len(msg) + 1:])
        kind, reply = link.responder.handle_doe(2, sess.seal(msg, from_requester=True))
        if kind == 1:
            break
        try:
            inner = sess.open(reply, from_requester=False)
        except Exception:
            break  # keys moved (KEY_UPDATE) without the requester following: stop here
        assert len(inner) >= 4
        if inner[1] == 0x69 and inner[2] in (1, 2):
            sess.update_req_keys()
            if inner[2] == 2:
                sess.update_rsp_keys()
    link.connect()


@settings(max_examples=MUTATIONS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([0x10, 0x11, 0x12, 0x13]), st.integers(0, 40), st.integers(0, 600),
       st.integers(0, 255), st.booleans())
def test_requester_rejects_mutated_responses_cleanly(version: int, which: int, pos: int,
                                                     value: int, truncate: bool) -> None:
    """A corrupted response makes the requester raise PeerError, nothing else."""
    from spdm.errors import PeerError

    link = make_link(identity_for("ecdsa-p256"), req={"versions": (version,)})
    count = {"n": 0}
    plain = link.responder.handle

    def handle(req: bytes) -> bytes:
        resp = plain(req)
        count["n"] += 1
        if count["n"] - 1 == which:
            if truncate:
                return resp[: pos % (len(resp) + 1)]
            b = bytearray(resp)
            b[pos % len(b)] = value
            return bytes(b)
        return resp

    link.responder.handle = handle  # type: ignore[method-assign]
    r = link.requester
    try:
        link.connect()
        link.run(r.challenge(0, 0xFF))
        link.run(r.get_measurements(0))
        link.run(r.get_measurements(0xFF))
        if version >= 0x11:
            sid = link.session(meas_summary=1)
            link.run(r.heartbeat(sid))
            link.run(r.psk_exchange(b"hint"))
    except PeerError:
        pass


@settings(max_examples=MUTATIONS // 3 or 1, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 12), st.integers(0, 300), st.integers(0, 255), st.booleans())
def test_requester_rejects_mutated_records_cleanly(which: int, pos: int, value: int,
                                                   truncate: bool) -> None:
    from spdm.errors import PeerError

    link = make_link(identity_for("ecdsa-p256"))
    link.connect()
    orig = link.responder.handle_doe
    count = {"n": 0}

    def handle_doe(kind: int, payload: bytes) -> tuple[int, bytes]:
        rkind, reply = orig(kind, payload)
        if kind == 2:
            count["n"] += 1
            if count["n"] - 1 == which:
                if truncate:
                    reply = reply[: pos % (len(reply) + 1)]
                else:
                    b = bytearray(reply)
                    b[pos % len(b)] = value
                    reply = bytes(b)
        return rkind, reply

    link.responder.handle_doe = handle_doe  # type: ignore[method-assign]
    r = link.requester
    try:
        sid = link.session()
        link.run(r.get_measurements(session_id=sid))
        link.run(r.key_update(sid))
        link.run(r.vendor_defined(3, b"\x01\x00", b"\x09", sid))
    except PeerError:
        pass
