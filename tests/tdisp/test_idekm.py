"""IDE_KM wire formats and responder (PCIe 6.2 §6.33.3; tee-io-validator IdeKmTestCase)."""

from __future__ import annotations

import pytest

from tdisp.errors import MalformedMessage, RefusalKind, VdmRefused
from tdisp.ide_target import InMemoryIdeTarget
from tdisp.idekm_messages import (
    INITIAL_IFV,
    KeyProg,
    KeySlot,
    KGoStopAck,
    KpAck,
    KpAckStatus,
    KSetGo,
    KSetStop,
    Query,
    QueryResp,
    SubStream,
    key_sub_stream,
    parse_idekm,
)
from tdisp.idekm_responder import IdeKmPolicy, IdeKmResponder

# tee-io-validator doc/key_byte_order.md example key, natural AES-GCM order.
DOC_KEY = bytes.fromhex("df254152056e02e0ef8b7feb9739d4d96a4eb80103241df7cd5e24b49ccd2720")
S1, S2 = 0x0000_0001, 0x0000_0002


def slot(
    stream: int = 1, key_set: int = 0, tx: bool = False, sub: int = 0, port: int = 0
) -> KeySlot:
    return KeySlot.of(stream, key_set, tx, sub, port)


def test_key_prog_exact_bytes_key_byte_order() -> None:
    msg = KeyProg(slot(stream=1, key_set=0, tx=True, sub=SubStream.NPR), DOC_KEY)
    wire = msg.build()
    assert len(wire) == 48
    # pid, object id, reserved[2], stream, reserved, key_sub_stream (NPR|TX|K0), port
    assert wire[:8] == bytes([0x00, 0x02, 0, 0, 0x01, 0, 0x12, 0x00])
    # Key_DW7 first: AES bytes 0..3 (df 25 41 52) as a little-endian DWORD 0xdf254152.
    assert wire[8:12] == bytes.fromhex("524125df")
    assert wire[36:40] == bytes.fromhex("2027cd9c")  # Key_DW0 = AES bytes 28..31
    assert wire[40:48] == bytes.fromhex("0000000001000000")  # IFV_DW1 = 0, IFV_DW0 = 1
    assert KeyProg.parse(wire) == msg
    assert KeyProg.parse(wire).key == DOC_KEY


@pytest.mark.parametrize(
    "msg",
    [
        Query(3),
        QueryResp(0, 0x08, 0x01, 0x00, 2, (0x42, 0, 0x1234)),
        QueryResp(1, 0, 0, 0, 1, ()),
        KeyProg(slot(7, 1, True, SubStream.CPL, 1), bytes(range(32)), INITIAL_IFV),
        KpAck(slot(7, 1, False, 2, 1), KpAckStatus.UNSUPPORTED_VALUE),
        KSetGo(slot(2, 1, True, 1)),
        KSetStop(slot(2, 0, False, 0)),
        KGoStopAck(slot(9, 1, True, 2, 3)),
    ],
)
def test_round_trip(msg: object) -> None:
    wire = msg.build()  # type: ignore[attr-defined]
    assert parse_idekm(wire) == msg


def test_sizes_match_spec() -> None:
    assert len(Query(0).build()) == 4
    assert len(KpAck(slot(), 0).build()) == 8
    assert len(KSetGo(slot()).build()) == 8
    assert len(QueryResp(0, 0, 0, 0, 0, (1, 2)).build()) == 8 + 8


def test_key_prog_repr_hides_key() -> None:
    assert DOC_KEY.hex() not in repr(KeyProg(slot(), DOC_KEY))


def test_parse_rejects_garbage() -> None:
    with pytest.raises(MalformedMessage):
        parse_idekm(b"\x00\x09\x00\x00")
    with pytest.raises(MalformedMessage):
        parse_idekm(b"\x01\x00")
    with pytest.raises(MalformedMessage):
        KSetGo.parse(KSetGo(slot()).build() + b"\x00")


# ---- responder ---------------------------------------------------------------


@pytest.fixture
def target() -> InMemoryIdeTarget:
    return InMemoryIdeTarget(streams={0: {1}, 1: {2}}, registers=(0x0000_0042, 0, 0xAB))


@pytest.fixture
def rsp(target: InMemoryIdeTarget) -> IdeKmResponder:
    return IdeKmResponder(target)


def prog(rsp: IdeKmResponder, s: KeySlot, session: int = S1, ifv: bytes = INITIAL_IFV) -> KpAck:
    return KpAck.parse(rsp.handle(KeyProg(s, DOC_KEY, ifv).build(), session))


def test_query_returns_target_registers(rsp: IdeKmResponder) -> None:
    resp = QueryResp.parse(rsp.handle(Query(0).build(), S1))
    assert resp == QueryResp(0, 0x00, 0x01, 0x00, 1, (0x42, 0, 0xAB))
    assert QueryResp.parse(rsp.handle(Query(1).build(), S1)).port_index == 1


def test_query_unknown_port_refused(rsp: IdeKmResponder) -> None:
    with pytest.raises(VdmRefused):
        rsp.handle(Query(5).build(), S1)


def test_key_prog_success_all_slots(rsp: IdeKmResponder, target: InMemoryIdeTarget) -> None:
    for key_set in (0, 1):
        for tx in (False, True):
            for sub in SubStream:
                s = slot(1, key_set, tx, sub)
                ack = prog(rsp, s)
                assert ack == KpAck(s, KpAckStatus.SUCCESS)
    assert len(target.keys) == 12
    assert target.keys[(0, 1, 0, True, 2)] == (DOC_KEY, INITIAL_IFV)


@pytest.mark.parametrize("length", [8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 47, 49])
def test_key_prog_bad_length_status_1(rsp: IdeKmResponder, length: int) -> None:
    s = slot(1, 1, True, SubStream.CPL)
    wire = KeyProg(s, DOC_KEY).build()
    wire = wire[:length] if length <= 48 else wire + b"\x00" * (length - 48)
    ack = KpAck.parse(rsp.handle(wire, S1))
    assert ack.status == KpAckStatus.INCORRECT_LENGTH
    assert ack.slot == s  # addressing echoed (KeyProg 2.2.4-2.2.6)


@pytest.mark.parametrize("port", [2, 0xFF])
def test_key_prog_bad_port_status_2(rsp: IdeKmResponder, port: int) -> None:
    assert prog(rsp, slot(1, port=port)).status == KpAckStatus.UNSUPPORTED_PORT_INDEX


@pytest.mark.parametrize(
    ("s", "ifv"),
    [
        (KeySlot(1, key_sub_stream(0, False, 3), 0), INITIAL_IFV),  # sub-stream 3
        (KeySlot(1, key_sub_stream(1, True, 0xF), 0), INITIAL_IFV),  # sub-stream 0xF
        (KeySlot(1, 0x04, 0), INITIAL_IFV),  # reserved key_sub_stream bit
        (slot(1), bytes(8)),  # IFV 0
        (slot(1), (2).to_bytes(8, "big")),  # IFV 2
        (slot(1), (0xFF).to_bytes(8, "big")),
        (slot(9), INITIAL_IFV),  # stream not configured on port 0
        (slot(2, port=0), INITIAL_IFV),  # stream 2 exists only on port 1
    ],
)
def test_key_prog_bad_values_status_3(rsp: IdeKmResponder, s: KeySlot, ifv: bytes) -> None:
    ack = prog(rsp, s, ifv=ifv)
    assert ack.status == KpAckStatus.UNSUPPORTED_VALUE
    assert ack.slot == s


def test_key_prog_ifv_check_configurable(target: InMemoryIdeTarget) -> None:
    rsp = IdeKmResponder(target, IdeKmPolicy(require_initial_ifv=False))
    assert prog(rsp, slot(1), ifv=bytes(8)).status == KpAckStatus.SUCCESS


def test_key_prog_target_failure_status_4(rsp: IdeKmResponder, target: InMemoryIdeTarget) -> None:
    target.fail_program = True
    assert prog(rsp, slot(1)).status == KpAckStatus.UNSPECIFIED_FAILURE


def test_k_set_go_stop_and_switch(rsp: IdeKmResponder, target: InMemoryIdeTarget) -> None:
    for key_set in (0, 1):
        assert prog(rsp, slot(1, key_set, True, 0)).status == 0
    go0 = KSetGo(slot(1, 0, True, 0))
    assert KGoStopAck.parse(rsp.handle(go0.build(), S1)) == KGoStopAck(go0.slot)
    assert target.active[(0, 1, True, 0)] == 0
    go1 = KSetGo(slot(1, 1, True, 0))
    rsp.handle(go1.build(), S1)
    assert target.active[(0, 1, True, 0)] == 1
    stop0 = KSetStop(slot(1, 0, True, 0))
    assert KGoStopAck.parse(rsp.handle(stop0.build(), S1)).slot == stop0.slot
    assert (0, 1, 0, True, 0) not in target.keys
    assert target.active[(0, 1, True, 0)] == 1


def test_k_set_go_without_key_refused(rsp: IdeKmResponder) -> None:
    with pytest.raises(VdmRefused) as exc:
        rsp.handle(KSetGo(slot(1, 1, False, 2)).build(), S1)
    assert exc.value.kind is RefusalKind.INVALID_STATE


def test_outside_session_refused(rsp: IdeKmResponder) -> None:
    with pytest.raises(VdmRefused) as exc:
        rsp.handle(Query(0).build(), None)
    assert exc.value.kind is RefusalKind.NO_SESSION
    assert exc.value.spdm_refusal().code == 0x0B  # SessionRequired


def test_second_session_ignored_until_first_ends(
    rsp: IdeKmResponder, target: InMemoryIdeTarget
) -> None:
    # IdeKmTestCase 5.1 / 5.2
    rsp.handle(Query(0).build(), S1)
    assert prog(rsp, slot(1)).status == 0
    for req in (Query(0).build(), KeyProg(slot(1, 1), DOC_KEY).build()):
        with pytest.raises(VdmRefused) as exc:
            rsp.handle(req, S2)
        assert exc.value.kind is RefusalKind.OTHER_SESSION
    rsp.session_ended(S1)
    assert target.keys == {}  # §11.4.5: keys of the ended session are stopped
    assert QueryResp.parse(rsp.handle(Query(0).build(), S2)).port_index == 0
    assert prog(rsp, slot(1), session=S2).status == 0


def test_keys_ready_tracks_session(rsp: IdeKmResponder) -> None:
    rsp.policy.single_session = False
    for tx in (False, True):
        for sub in SubStream:
            prog(rsp, slot(1, 0, tx, sub), session=S1)
    assert rsp.keys_ready(1, S1)
    assert not rsp.keys_ready(1, S2)
    assert not rsp.keys_ready(1, S1, require_go=True)
    for tx in (False, True):
        for sub in SubStream:
            rsp.handle(KSetGo(slot(1, 0, tx, sub)).build(), S1)
    assert rsp.keys_ready(1, S1, require_go=True)
    rsp.handle(KSetStop(slot(1, 0, True, 1)).build(), S1)
    assert not rsp.keys_ready(1, S1)


def test_log_never_contains_key(rsp: IdeKmResponder) -> None:
    prog(rsp, slot(1))
    assert all(DOC_KEY.hex() not in line for line in rsp.log)


@pytest.mark.parametrize(
    "s",
    [slot(1, port=7), slot(9), KeySlot(1, key_sub_stream(0, False, 3), 0), KeySlot(1, 0x08, 0)],
)
def test_k_set_bad_addressing_refused(rsp: IdeKmResponder, s: KeySlot) -> None:
    for msg in (KSetGo(s), KSetStop(s)):
        with pytest.raises(VdmRefused) as exc:
            rsp.handle(msg.build(), S1)
        assert exc.value.kind is RefusalKind.MALFORMED


def test_k_set_stop_unprogrammed_is_acked(rsp: IdeKmResponder) -> None:
    s = slot(1, 1, True, 2)
    assert KGoStopAck.parse(rsp.handle(KSetStop(s).build(), S1)).slot == s


def test_reprogramming_active_key_keeps_it_active(rsp: IdeKmResponder) -> None:
    for tx in (False, True):
        for sub in SubStream:
            prog(rsp, slot(1, 0, tx, sub))
            rsp.handle(KSetGo(slot(1, 0, tx, sub)).build(), S1)
    prog(rsp, slot(1, 0, True, SubStream.PR))  # key refresh in place
    assert rsp.keys_ready(1, S1, require_go=True)
