"""Fault plans: TOML, --fault specs, validation errors naming rule and field, selectors."""

from __future__ import annotations

import pytest

from spdm.codes import ErrorCode
from vdev.faults.plan import FaultPlan, FaultPlanError, parse_spec, rule_from_dict


def test_toml_plan() -> None:
    plan = FaultPlan.from_toml("""
[[fault]]
kind = "corrupt"
match = "KEY_EXCHANGE"
nth = 1

[[fault]]
kind = "error"
match = "GET_MEASUREMENTS"
every = true
code = "Busy"

[[fault]]
kind = "delay"
match = "doe"
probability = 0.5
seed = 7
delay_ms = 200
""")
    a, b, c = plan.rules
    assert (a.kind, a.match, a.nth, a.offset) == ("corrupt", "KEY_EXCHANGE", 1, -1)
    assert b.every and b.code == ErrorCode.BUSY
    assert c.probability == 0.5 and c.seed == 7 and c.delay_ms == 200
    assert b.to_json()["code"] == "BUSY"


def test_cli_spec() -> None:
    r = parse_spec("truncate:GET_MEASUREMENTS:nth=2,length=3")
    assert (r.kind, r.match, r.nth, r.length) == ("truncate", "GET_MEASUREMENTS", 2, 3)
    r = parse_spec("drop:secured:every")
    assert r.every and r.nth is None
    r = parse_spec("corrupt:doe:p=0.25,seed=1,offset=4")
    assert r.probability == 0.25 and r.seed == 1 and r.offset == 4
    assert parse_spec("error:KEY_EXCHANGE:code=ResponseNotReady").code == 0x42
    assert parse_spec("doe_error:FINISH").nth == 1


@pytest.mark.parametrize("text, words", [
    ('[[fault]]\nkind = "explode"\nmatch = "doe"', ["fault #1", "'kind'"]),
    ('[[fault]]\nkind = "drop"\nmatch = "doe"\n[[fault]]\nkind = "drop"\nmatch = "NOPE"',
     ["fault #2", "'match'"]),
    ('[[fault]]\nkind = "drop"\nmatch = "doe"\nnth = 0', ["fault #1 (drop)", "'nth'"]),
    ('[[fault]]\nkind = "delay"\nmatch = "doe"', ["'delay_ms'", "required"]),
    ('[[fault]]\nkind = "truncate"\nmatch = "doe"', ["'length'"]),
    ('[[fault]]\nkind = "drop"\nmatch = "doe"\nlength = 3', ["'length'", "unknown"]),
    ('[[fault]]\nkind = "drop"\nmatch = "doe"\nnth = 1\nevery = true', ["'every'", "one"]),
    ('[[fault]]\nkind = "drop"\nmatch = "doe"\nprobability = 2.0', ["'probability'"]),
    ('[[fault]]\nkind = "error"\nmatch = "doe"\ncode = "Grumpy"', ["'code'"]),
    ('[[fault]]\nkind = "drop"\nmatch = "doe"\nseed = 3', ["'seed'"]),
    ("fault = 1", ["[[fault]]"]),
    ("[[oops]]", ["'oops'"]),
    ("[[fault", ["plan.toml"]),
])
def test_toml_errors_name_rule_and_field(text: str, words: list[str]) -> None:
    with pytest.raises(FaultPlanError) as exc:
        FaultPlan.from_toml(text, "plan.toml")
    for w in words:
        assert w in str(exc.value)


@pytest.mark.parametrize("spec, word", [
    ("corrupt", "'match'"), ("a:b:c:d", "expected KIND"), ("corrupt:KEY_EXCHANGE:nth=x", "'nth'"),
    ("corrupt:KEY_EXCHANGE:bogus", "'bogus'"), ("delay:doe:delay_ms=-1", "'delay_ms'"),
])
def test_spec_errors(spec: str, word: str) -> None:
    with pytest.raises(FaultPlanError, match=word) as exc:
        parse_spec(spec)
    assert spec in str(exc.value)


def test_json_rule_must_be_object() -> None:
    with pytest.raises(FaultPlanError, match="control"):
        rule_from_dict([], "control")  # type: ignore[arg-type]


def test_selectors() -> None:
    nth = rule_from_dict({"kind": "drop", "match": "GET_VERSION", "nth": 3})
    assert [nth.select() for _ in range(5)] == [False, False, True, False, False]
    every = rule_from_dict({"kind": "drop", "match": "doe", "every": True})
    assert all(every.select() for _ in range(5))
    runs = []
    for _ in range(2):
        p = rule_from_dict({"kind": "drop", "match": "doe", "probability": 0.5, "seed": 42})
        runs.append([p.select() for _ in range(32)])
    assert runs[0] == runs[1] and 4 < sum(runs[0]) < 28  # seeded: reproducible, mixed
    other = rule_from_dict({"kind": "drop", "match": "doe", "probability": 0.5, "seed": 43})
    assert [other.select() for _ in range(32)] != runs[0]


def test_plan_counts_only_matching_requests() -> None:
    plan = FaultPlan([rule_from_dict({"kind": "drop", "match": "FINISH", "nth": 2})])
    assert plan.select("KEY_EXCHANGE") is None
    assert plan.select("FINISH") is None
    assert plan.select("secured") is None
    assert plan.select("FINISH") is plan.rules[0]
    assert plan.rules[0].seen == 2 and plan.rules[0].fired == 1
