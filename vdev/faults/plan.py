"""Fault plans: which response to break, and how (sans-IO, no device here).

A rule is {kind, match, selector, kind parameters}.  `match` is an SPDM request code
name (plaintext type-1 objects), "secured" (any type-2 secured object: the device sees
only ciphertext there) or "doe" (any SPDM / secured-SPDM DOE object).  The selector is
one of nth (1-based occurrence among matching requests; the default is nth=1), every,
or probability with a seed (a private RNG, so a run is reproducible).
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spdm.codes import ErrorCode, Req

KINDS = ("drop", "delay", "corrupt", "truncate", "error", "doe_error")
MATCH_ANY, MATCH_SECURED = "doe", "secured"
# Which parameters each kind takes (beyond kind, match and the selector).
PARAMS: dict[str, frozenset[str]] = {
    "drop": frozenset(), "doe_error": frozenset(),
    "delay": frozenset({"delay_ms"}), "corrupt": frozenset({"offset"}),
    "truncate": frozenset({"length"}), "error": frozenset({"code"}),
}
SELECTORS = frozenset({"nth", "every", "probability", "seed"})


class FaultPlanError(ValueError):
    """A rule is invalid; the message names the rule and the field."""


@dataclass
class FaultRule:
    kind: str
    match: str
    nth: int | None = 1
    every: bool = False
    probability: float | None = None
    seed: int = 0
    delay_ms: int = 0
    offset: int = -1  # corrupt: byte to flip; negative counts from the end (last byte)
    length: int = 0  # truncate: bytes kept
    code: int = ErrorCode.UNSPECIFIED  # error: SPDM ErrorCode
    seen: int = field(default=0, compare=False)  # matching requests so far
    fired: int = field(default=0, compare=False)
    _rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def matches(self, name: str) -> bool:
        return self.match == MATCH_ANY or self.match == name

    def select(self) -> bool:
        """Count one matching request; True when this occurrence is to be broken."""
        self.seen += 1
        if self.every:
            hit = True
        elif self.probability is not None:
            hit = self._rng.random() < self.probability
        else:
            hit = self.seen == self.nth
        if hit:
            self.fired += 1
        return hit

    def selector_text(self) -> str:
        if self.every:
            return "every"
        if self.probability is not None:
            return f"p={self.probability},seed={self.seed}"
        return f"nth={self.nth}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "match": self.match}
        if self.every:
            out["every"] = True
        elif self.probability is not None:
            out.update(probability=self.probability, seed=self.seed)
        else:
            out["nth"] = self.nth
        for name in sorted(PARAMS[self.kind]):
            value = getattr(self, name)
            known = name == "code" and value in ErrorCode._value2member_map_
            out[name] = ErrorCode(value).name if known else value
        out.update(seen=self.seen, fired=self.fired)
        return out


def _int(where: str, name: str, value: Any, minimum: int | None = None) -> int:
    if type(value) is not int or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise FaultPlanError(f"{where}: field {name!r}: expected an integer{bound}, "
                             f"got {value!r}")
    return value


def rule_from_dict(data: dict[str, Any], where: str = "fault") -> FaultRule:
    """Validate one rule (TOML table, control-socket JSON, parsed --fault spec)."""
    if not isinstance(data, dict):
        raise FaultPlanError(f"{where}: expected a table/object, got {data!r}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise FaultPlanError(f"{where}: field 'kind': {kind!r} is not one of "
                             f"{', '.join(KINDS)}")
    where = f"{where} ({kind})"
    match = data.get("match")
    if not isinstance(match, str) or not (
        match in (MATCH_ANY, MATCH_SECURED) or match in Req.__members__
    ):
        raise FaultPlanError(f"{where}: field 'match': {match!r} is not an SPDM request code "
                             f"name (e.g. KEY_EXCHANGE), 'secured' or 'doe'")
    allowed = {"kind", "match"} | SELECTORS | PARAMS[kind]
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise FaultPlanError(f"{where}: field {unknown[0]!r}: unknown for kind {kind!r} "
                             f"(allowed: {', '.join(sorted(allowed))})")
    rule = FaultRule(kind=kind, match=match)
    chosen = [k for k in ("nth", "every", "probability") if k in data]
    if len(chosen) > 1:
        raise FaultPlanError(f"{where}: field {chosen[1]!r}: give one selector of nth, "
                             f"every, probability")
    if "seed" in data and "probability" not in data:
        raise FaultPlanError(f"{where}: field 'seed': only with 'probability'")
    if "nth" in data:
        rule.nth = _int(where, "nth", data["nth"], 1)
    if "every" in data:
        if data["every"] is not True:
            raise FaultPlanError(f"{where}: field 'every': expected true, got {data['every']!r}")
        rule.every, rule.nth = True, None
    if "probability" in data:
        p = data["probability"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise FaultPlanError(f"{where}: field 'probability': expected a number in "
                                 f"[0, 1], got {p!r}")
        rule.probability, rule.nth = float(p), None
        rule.seed = _int(where, "seed", data.get("seed", 0))
        rule._rng = random.Random(rule.seed)
    if "delay_ms" in data:
        rule.delay_ms = _int(where, "delay_ms", data["delay_ms"], 0)
    elif kind == "delay":
        raise FaultPlanError(f"{where}: field 'delay_ms': required for kind 'delay'")
    if "offset" in data:
        rule.offset = _int(where, "offset", data["offset"])
    if "length" in data:
        rule.length = _int(where, "length", data["length"], 0)
    elif kind == "truncate":
        raise FaultPlanError(f"{where}: field 'length': required for kind 'truncate'")
    if "code" in data:
        code = data["code"]
        if isinstance(code, str):
            name = code.upper().replace("-", "_")
            # Accept the DSP0274 spelling too ("Busy", "ResponseNotReady").
            by_camel = {n.replace("_", ""): n for n in ErrorCode.__members__}
            name = name if name in ErrorCode.__members__ else by_camel.get(name, "")
            if not name:
                raise FaultPlanError(f"{where}: field 'code': {code!r} is not an SPDM "
                                     f"error code name (e.g. Busy, Unspecified)")
            rule.code = ErrorCode[name]
        else:
            rule.code = _int(where, "code", code, 0)
            if rule.code > 0xFF:
                raise FaultPlanError(f"{where}: field 'code': {code} does not fit a byte")
    return rule


def _scalar(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> FaultRule:
    """`KIND:MATCH[:nth=N|every|p=0.5,seed=1][,delay_ms=..,offset=..,length=..,code=..]`."""
    where = f"--fault {spec!r}"
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise FaultPlanError(f"{where}: expected KIND:MATCH[:OPTIONS]")
    data: dict[str, Any] = {"kind": parts[0], "match": parts[1]}
    if len(parts) == 3:
        for item in filter(None, parts[2].split(",")):
            key, eq, value = item.partition("=")
            key = {"p": "probability"}.get(key, key)
            if not eq:
                if key != "every":
                    raise FaultPlanError(f"{where}: field {key!r}: expected {key}=VALUE")
                data["every"] = True
                continue
            data[key] = _scalar(value)
    return rule_from_dict(data, where)


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)

    @classmethod
    def from_toml(cls, text: str, source: str = "fault plan") -> FaultPlan:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FaultPlanError(f"{source}: {exc}") from None
        extra = sorted(set(doc) - {"fault"})
        if extra:
            raise FaultPlanError(f"{source}: unknown top-level key {extra[0]!r} "
                                 f"(rules are [[fault]] tables)")
        tables = doc.get("fault", [])
        if not isinstance(tables, list):
            raise FaultPlanError(f"{source}: 'fault' must be an array of tables ([[fault]])")
        return cls([rule_from_dict(t, f"{source}: fault #{i}")
                    for i, t in enumerate(tables, 1)])

    @classmethod
    def load(cls, path: str | Path) -> FaultPlan:
        p = Path(path)
        return cls.from_toml(p.read_text(), str(p))

    @classmethod
    def from_specs(cls, specs: list[str]) -> FaultPlan:
        return cls([parse_spec(s) for s in specs])

    def select(self, name: str) -> FaultRule | None:
        """Every matching rule counts this request; the first one that fires wins."""
        chosen = None
        for rule in self.rules:
            if rule.matches(name) and rule.select() and chosen is None:
                chosen = rule
        return chosen
