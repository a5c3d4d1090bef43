"""HeartbeatPeriod: sent only when both ends set HBEAT_CAP, and a session that hears nothing
for twice the period is ended (DSP0274 KEY_EXCHANGE_RSP/PSK_EXCHANGE_RSP Param1 and the
HEARTBEAT clause), by the next message or by the device's timer."""

from __future__ import annotations

from spdm.codes import ReqCap, RspCap
from spdm.errors import ErrorResponse
from spdm.identity import DeviceIdentity
from spdm.requester import DEFAULT_REQ_CAPS
from tests.helpers.spdm_harness import make_link


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_period_sent_only_when_both_ends_set_hbeat_cap(p384_identity: DeviceIdentity) -> None:
    with_hbeat = make_link(p384_identity, rsp={"heartbeat_period": 7})
    with_hbeat.connect()
    sid = with_hbeat.session()
    assert with_hbeat.responder.capabilities & RspCap.HBEAT
    assert with_hbeat.requester.sessions[sid].heartbeat_period == 7

    no_req = make_link(p384_identity, rsp={"heartbeat_period": 7},
                       req={"capabilities": int(DEFAULT_REQ_CAPS & ~ReqCap.HBEAT)})
    no_req.connect()
    assert no_req.requester.sessions[no_req.session()].heartbeat_period == 0

    zero = make_link(p384_identity, rsp={"heartbeat_period": 0})
    zero.connect()
    # No period: no HBEAT_CAP at all (the flag is derived from what is configured).
    assert not zero.requester.conn.rsp_caps & RspCap.HBEAT
    assert zero.requester.sessions[zero.session()].heartbeat_period == 0


def test_psk_session_gets_the_period_too(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, rsp={"heartbeat_period": 9})
    link.run(link.requester.init_connection())
    sid = link.run(link.requester.psk_exchange(b"hint"))
    assert link.requester.sessions[sid].heartbeat_period == 9


def test_silent_session_ends_on_its_next_message(p384_identity: DeviceIdentity) -> None:
    clock = FakeClock()
    ended: list[int] = []
    link = make_link(p384_identity, rsp={"heartbeat_period": 5, "monotonic": clock})
    link.responder.hooks.on_session_end = ended.append
    link.connect()
    sid = link.session()
    for _ in range(3):  # messages within the period keep it alive, however many periods
        clock.now += 9
        link.run(link.requester.heartbeat(sid))
    clock.now += 10.5  # more than 2 x 5 s of silence
    try:
        link.run(link.requester.heartbeat(sid))
    except ErrorResponse as exc:
        assert exc.code == 0x0B  # SessionRequired: no such session any more (1.2+)
    else:
        raise AssertionError("an expired session answered")
    assert ended == [sid] and sid not in link.responder.sessions


def test_timer_ends_a_silent_session_without_traffic(p384_identity: DeviceIdentity) -> None:
    clock = FakeClock()
    link = make_link(p384_identity, rsp={"heartbeat_period": 5, "monotonic": clock})
    link.connect()
    sid = link.session()
    assert link.responder.next_heartbeat_deadline() == 10.0
    clock.now += 6
    assert link.responder.expire_idle_sessions() == []
    assert link.responder.next_heartbeat_deadline() == 4.0
    clock.now += 5
    assert [s.session_id for s in link.responder.idle_sessions()] == [sid]
    assert link.responder.expire_idle_sessions() == [sid]
    assert link.responder.sessions == {}
    assert link.responder.next_heartbeat_deadline() is None


def test_a_record_that_does_not_authenticate_does_not_keep_the_session_alive(
        p384_identity: DeviceIdentity) -> None:
    clock = FakeClock()
    link = make_link(p384_identity, rsp={"heartbeat_period": 5, "monotonic": clock,
                                         "terminate_session_on_decrypt_error": False})
    link.connect()
    sid = link.session()
    clock.now += 8
    forged = sid.to_bytes(4, "little") + (20).to_bytes(2, "little") + bytes(20)
    kind, reply = link.responder.handle_doe(2, forged)
    assert kind == 1 and reply[1] == 0x7F and reply[2] == 0x06  # DecryptError, in the clear
    assert sid in link.responder.sessions
    clock.now += 3  # 11 s since the last authenticated message
    assert link.responder.expire_idle_sessions() == [sid]
