"""The compiled SPDM declarations (spdm.compiled) mean exactly what the interpreted ones do.

decode()/encode() run `compiled(fmt)`; these properties check, for every message
declaration, that construct's interpreter and the compiled twin agree on arbitrary bytes
(same value, or both a ConstructError) and on building (same bytes, or both an error),
including the cases construct's own code generator gets wrong: short reads, Bytes of the
wrong length, Array counts and Const values.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import construct
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spdm import messages
from spdm.compiled import build as compiled_build
from spdm.compiled import compiled
from spdm.compiled import parse_stream as compiled_parse
from spdm.key_schedule import BinConcat
from spdm.secured_message import CipherText, RecordHeader, RecordSessionId

FORMATS = {name: obj for name, obj in vars(messages).items() if isinstance(obj, construct.Struct)}
# The other declarations the hot paths run compiled: DSP0277 records, the key schedule.
FORMATS.update(RecordHeader=RecordHeader, RecordSessionId=RecordSessionId,
               CipherText=CipherText, BinConcat=BinConcat)

params = st.fixed_dictionaries({
    "hash_size": st.sampled_from([0, 32, 48]),
    "sig_size": st.sampled_from([0, 64, 96]),
    "exchange_size": st.sampled_from([0, 64, 96]),
    "meas_summary_size": st.sampled_from([0, 32]),
    "verify_size": st.sampled_from([0, 32]),
    "multi_key": st.integers(0, 1),
    "seq_num_size": st.sampled_from([0, 2, 8]),
    "label_size": st.sampled_from([0, 3, 11]),
})


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except construct.ConstructError:
        return "error", None


def test_every_message_declaration_compiles() -> None:
    interpreted = [n for n, f in FORMATS.items() if compiled(f) is f]
    assert interpreted == []


@pytest.mark.parametrize("name", sorted(FORMATS))
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=120), ctx=params)
def test_parse_and_rebuild_agree(name: str, data: bytes, ctx: dict[str, int]) -> None:
    fmt = FORMATS[name]
    # A plausible header makes the Const code match, so the body gets exercised too.
    if len(data) >= 2 and name not in ("Header", "RecordHeader", "AlgStruct", "RecordSessionId",
                                       "CipherText", "BinConcat"):
        code = next((sc.subcon.value for sc in fmt.subcons if sc.name == "code"), None)
        if code is not None:
            data = data[:1] + bytes([int(code)]) + data[2:]
    slow = _outcome(lambda: fmt.parse(data, **ctx))
    assert slow == _outcome(lambda: compiled(fmt).parse(data, **ctx))
    # decode()'s entry point, which skips construct's own parse_stream.
    assert slow == _outcome(lambda: compiled_parse(fmt, BytesIO(data), ctx))
    if slow[0] == "ok":
        fields = dict(slow[1])
        built = _outcome(lambda: fmt.build(fields, **ctx))
        assert built == _outcome(lambda: compiled(fmt).build(fields, **ctx))
        assert built == _outcome(lambda: compiled_build(fmt, fields, ctx))


@pytest.mark.parametrize("fields", [
    {"version": 0x12, "param1": 0, "param2": 0, "offset": 0, "length": 0x10000},  # u16 range
    {"version": 0x12, "code": 0x01, "param1": 0, "param2": 0, "offset": 0, "length": 1},
    {"version": 0x12, "param1": 0, "param2": 0, "offset": "x", "length": 1},
])
def test_build_errors_agree(fields: dict[str, Any]) -> None:
    fmt = messages.GetCertificate
    assert _outcome(lambda: fmt.build(fields)) == ("error", None)
    assert _outcome(lambda: compiled(fmt).build(fields)) == ("error", None)


def test_wrong_length_bytes_and_array_count_are_errors() -> None:
    ctx = {**messages._DEFAULT_PARAMS, "hash_size": 48}
    finish = {"version": 0x12, "signature": b"", "verify_data": bytes(47)}
    with pytest.raises(messages.MessageFormatError):
        messages.encode(messages.Finish, finish, hash_size=48)
    with pytest.raises(construct.StreamError):
        compiled(messages.Finish).build(finish, **ctx)
    neg = {"version": 0x12, "param1": 2, "meas_spec": 1, "base_asym": 0, "base_hash": 0,
           "alg_structs": [{"alg_type": 2, "supported": 1}]}
    with pytest.raises(messages.MessageFormatError):
        messages.encode(messages.NegotiateAlgorithms, neg)
