"""Arbitrary bytes never crash the engines (hypothesis).

TDISP always answers with a well-formed TDISP message; IDE_KM answers or raises
VdmRefused, nothing else.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tdisp.errors import VdmRefused
from tdisp.idekm_messages import parse_idekm
from tdisp.messages import HEADER_SIZE, TdispError, decode_vdm
from tests.helpers.tdisp_rig import SESSION, TDI_ID, make_rig

_fid = TDI_ID.function_id.to_bytes(4, "little")


@settings(max_examples=300, deadline=None)
@given(code=st.integers(0, 255), body=st.binary(max_size=64), version=st.sampled_from([0x10, 0x11]))
def test_tdisp_any_request_gets_a_tdisp_response(code: int, body: bytes, version: int) -> None:
    rig = make_rig()
    payload = bytes([0x01, version, code, 0, 0]) + _fid + bytes(8) + body
    msg = decode_vdm(rig.send(payload))
    assert msg.interface_id.function_id == TDI_ID.function_id
    if not (0x81 <= code <= 0x87) or version != 0x10:
        assert isinstance(msg, TdispError)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=HEADER_SIZE + 40))
def test_tdisp_random_bytes(raw: bytes) -> None:
    rig = make_rig()
    decode_vdm(rig.send(b"\x01" + raw))


@settings(max_examples=300, deadline=None)
@given(object_id=st.integers(0, 8), body=st.binary(max_size=60))
def test_idekm_random_objects(object_id: int, body: bytes) -> None:
    rig = make_rig()
    try:
        out = rig.send(bytes([0x00, object_id]) + body, SESSION)
    except VdmRefused:
        return
    parse_idekm(out)
