"""Property tests: arbitrary input never crashes the responder or wedges it."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spdm_harness import identity_for, make_link

from spdm.codes import Req

CODES = [int(c) for c in Req] + [0x00, 0x04, 0x7F, 0xF5]


def _message() -> st.SearchStrategy[bytes]:
    head = st.tuples(st.sampled_from([0x10, 0x11, 0x12, 0x13, 0x14]), st.sampled_from(CODES),
                     st.integers(0, 255), st.integers(0, 255))
    return st.builds(lambda h, body: bytes(h) + body, head, st.binary(max_size=200))


LINK = None


def _link():  # type: ignore[no-untyped-def]
    global LINK
    if LINK is None:
        LINK = make_link(identity_for("ecdsa-p256"), rsp={"data_transfer_size": 256})
        LINK.connect()
    return LINK


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), min_size=1, max_size=4))
def test_plain_requests_never_crash(msgs: list[bytes]) -> None:
    link = _link()
    for msg in msgs:
        resp = link.responder.handle(msg)
        assert len(resp) >= 4 and resp[0] in (0x10, 0x11, 0x12, 0x13)
    # Whatever happened, a fresh connection works.
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


def _recorded_plain_flow() -> list[bytes]:
    link = make_link(identity_for("ecdsa-p256"))
    link.connect()
    link.run(link.requester.challenge())
    link.run(link.requester.get_measurements())
    link.session()
    return [req for kind, req, _ in link.log if kind == 1]


FLOW = _recorded_plain_flow()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(FLOW) - 1), st.integers(0, 400), st.integers(0, 255),
       st.booleans())
def test_mutated_flow_never_crashes(which: int, pos: int, value: int, truncate: bool) -> None:
    from spdm.responder import Responder

    link = make_link(identity_for("ecdsa-p256"))
    rsp: Responder = link.responder
    for i, req in enumerate(FLOW):
        if i == which:
            if truncate:
                req = req[: pos % (len(req) + 1)]
            else:
                b = bytearray(req)
                b[pos % len(b)] = value
                req = bytes(b)
        resp = rsp.handle(req)
        assert len(resp) >= 4
    link.connect()
