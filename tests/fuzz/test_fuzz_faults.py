"""Fault plans and response mutations under arbitrary input: a plan either loads or
raises FaultPlanError naming the problem; a mutation either returns bytes or raises
NotApplicable -- never anything else, whatever the device (or a fuzzer) produced."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from spdm.algorithms import BaseAsym, BaseHash, Dhe, NegotiatedAlgorithms
from spdm.codes import Req, Rsp
from tests.fuzz.budget import examples
from vdev.faults import mutate
from vdev.faults.mutate import NotApplicable
from vdev.faults.names import message_name
from vdev.faults.plan import KINDS, FaultPlan, FaultPlanError, parse_spec, rule_from_dict

NAMES = st.sampled_from([*Req.__members__, "secured", "doe", "KEY_PROG", "QUERY",
                         "LOCK_INTERFACE_REQUEST", "GET_DEVICE_INTERFACE_REPORT", "bogus"])
VALUES = st.one_of(st.integers(-2, 300), st.text(max_size=12), st.booleans(), st.none(),
                   st.floats(allow_nan=True), st.lists(st.integers(), max_size=2))
KEYS = st.sampled_from(["nth", "every", "probability", "seed", "delay_ms", "offset", "field",
                        "length", "code", "version", "slot", "index", "extra"])


@examples(300)
@given(kind=st.one_of(st.sampled_from(KINDS), st.text(max_size=8)), match=st.one_of(NAMES,
       st.none()), extra=st.dictionaries(KEYS, VALUES, max_size=4))
def test_rule_validation_raises_only_plan_errors(kind: Any, match: Any,
                                                 extra: dict[str, Any]) -> None:
    data: dict[str, Any] = {"kind": kind, **extra}
    if match is not None:
        data["match"] = match
    try:
        rule = rule_from_dict(data)
    except FaultPlanError as exc:
        assert "fault" in str(exc)
        return
    assert rule.kind in KINDS
    assert rule.to_json()["kind"] == rule.kind  # what `vdev ctl faults list` shows


@examples(200)
@given(spec=st.text(alphabet="abcdefgilmnoprstuvwxyz_:=,.0123456789-", max_size=40))
def test_spec_parser(spec: str) -> None:
    try:
        parse_spec(spec)
    except FaultPlanError as exc:
        assert spec in str(exc)


@examples(100)
@given(text=st.text(max_size=200))
def test_plan_toml(text: str) -> None:
    with contextlib.suppress(FaultPlanError):
        FaultPlan.from_toml(text)


ALG = NegotiatedAlgorithms(base_asym=BaseAsym.ECDSA_P384, base_hash=BaseHash.SHA_384,
                           dhe=Dhe.SECP384R1)
CODES = st.sampled_from([int(c) for c in Rsp] + [int(c) for c in Req] + [0x00, 0x33])


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    head = bytes([draw(st.sampled_from([0x10, 0x12, 0x13])), draw(CODES),
                  draw(st.integers(0, 255)), draw(st.integers(0, 255))])
    return head + draw(st.binary(max_size=300))


@examples(300)
@given(request=messages(), response=messages(),
       field=st.sampled_from(["signature", "nonce", "state", "status", "portion", "param1",
                              "verify_data", "cert_chain", "opaque", "version", "nope"]),
       offset=st.integers(-400, 400))
def test_mutations_return_bytes_or_not_applicable(request: bytes, response: bytes, field: str,
                                                  offset: int) -> None:
    message_name(request)
    mutate.response_name(response)
    attempts = [
        lambda: mutate.corrupt_field(request, response, field, ALG),
        lambda: mutate.corrupt_offset(response, offset),
        lambda: mutate.wrong_version(response, None),
        lambda: mutate.wrong_slot(response, None),
        lambda: mutate.wrong_nonce(response),
        lambda: mutate.report_mismatch(response, 0, response),
        lambda: mutate.tdisp_error(request, 1),
        lambda: mutate.kp_ack_error(request, 3),
    ]
    for attempt in attempts:
        try:
            out = attempt()
        except NotApplicable:
            continue
        data = out[0] if isinstance(out, tuple) else out
        assert isinstance(data, bytes)
