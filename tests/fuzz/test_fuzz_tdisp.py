"""IDE_KM and TDISP: every request of a real flow to RUN, mutated, at its place in the flow.

tests/tdisp/test_tdisp_fuzz.py already sends random bytes with random codes; here the
requests come from a recorded flow (QUERY, KEY_PROG, K_SET_GO, GET_VERSION,
GET_CAPABILITIES, LOCK, GET_DEVICE_INTERFACE_REPORT, GET_STATE, START, STOP), so the
mutations reach the state machine.  Invariants: a TDISP request gets a TDISP_ERROR or
its own response; an IDE_KM object gets its ACK or is refused (VdmRefused); afterwards
STOP_INTERFACE brings the TDI back and a correct flow reaches RUN again.  The
requester-side decoders (what a TSM parses) raise only TdispProtocolError.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from tdisp.codes import TdiState
from tdisp.errors import TdispProtocolError, VdmRefused
from tdisp.idekm_messages import parse_idekm
from tdisp.interface_report import InterfaceReport
from tdisp.messages import TdispVersion, decode_vdm, expect
from tests.fuzz.budget import examples
from tests.fuzz.mutations import damaged
from tests.helpers.tdisp_rig import Rig, make_rig


def _damaged(msg: bytes) -> st.SearchStrategy[bytes]:
    return damaged(msg, header=16, byte_weight=2)


TDISP_ERROR = 0x7F


def _recorded() -> list[bytes]:
    rig = make_rig()
    sent: list[bytes] = []
    send = rig.send

    def record(payload: bytes, session: int | None = None) -> bytes:
        sent.append(payload)
        return send(payload) if session is None else send(payload, session)

    rig.send = record  # type: ignore[method-assign]
    from tdisp.requesters import IdeKmRequester

    rig.send(IdeKmRequester.query())
    rig.send(rig.req.get_version())
    rig.send(rig.req.get_capabilities())
    rig.program_keys()
    nonce = rig.lock()
    reader = rig.req.report_reader(0x40)
    while (req := reader.next_request()) is not None:
        reader.feed(rig.send(req))
    rig.state()
    rig.start(nonce)
    rig.state()
    rig.send(rig.req.stop())
    return sent


FLOW = _recorded()




def _check(req: bytes, rig: Rig) -> None:
    try:
        resp = rig.send(req)
    except VdmRefused:
        assert req[:1] != b"\x01", "TDISP requests are always answered"
        return
    if req[:1] == b"\x01":
        decode_vdm(resp)
        assert resp[0] == 0x01
        if len(req) >= 3 and req[2] >= 0x80:
            assert resp[2] in (TDISP_ERROR, req[2] - 0x80), (req.hex(), resp.hex())
        else:
            assert resp[2] == TDISP_ERROR
    else:
        parse_idekm(resp)


def _recovers(rig: Rig) -> None:
    rig.send(rig.req.stop())
    assert rig.state() == TdiState.CONFIG_UNLOCKED
    rig.to_run()
    assert rig.state() == TdiState.RUN


@examples(200)
@given(st.data())
def test_mutated_flow_request(data: st.DataObject) -> None:
    which = data.draw(st.integers(0, len(FLOW) - 1), label="which")
    mutated = data.draw(_damaged(FLOW[which]), label="mutated")
    rig = make_rig()
    for req in FLOW[:which]:
        rig.send(req)
    _check(mutated, rig)
    _recovers(rig)


@examples(100)
@given(st.lists(st.tuples(st.integers(0, len(FLOW) - 1), st.data()), min_size=1, max_size=6))
def test_mutated_request_sequences(steps: list[tuple[int, st.DataObject]]) -> None:
    rig = make_rig()
    for which, data in steps:
        req = FLOW[which] if data.draw(st.booleans()) else data.draw(_damaged(FLOW[which]))
        _check(req, rig)
    _recovers(rig)


# ---- requester-side decoders (what the TSM parses from a device) -------------------------

RESPONSES = [make_rig().send(req) for req in FLOW[:3]]  # QUERY_RESP, VERSION, CAPABILITIES


@examples(300)
@given(st.one_of(st.binary(max_size=80),
                 st.sampled_from(RESPONSES).flatmap(_damaged)))
def test_requester_decoders_raise_only_protocol_errors(raw: bytes) -> None:
    """decode_vdm / parse_idekm / InterfaceReport.decode / expect: a well-defined result
    or TdispProtocolError (MalformedMessage, UnexpectedResponse, ...), nothing else."""
    for fn in (lambda: decode_vdm(raw), lambda: parse_idekm(raw),
               lambda: InterfaceReport.decode(raw), lambda: InterfaceReport.decode(raw[16:]),
               lambda: expect(raw, TdispVersion), lambda: decode_vdm(b"\x01" + raw)):
        with contextlib.suppress(TdispProtocolError):
            fn()
