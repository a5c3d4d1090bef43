"""Fault plans: which message to break, and how (sans-IO, no device here).

A rule is {kind, match, selector, kind parameters}.  `match` picks the layer:

  transport  "doe" (any SPDM / secured-SPDM DOE object) or "secured" (a type-2 record
             as a whole: ciphertext, sequence number and MAC)
  message    a request name (vdev.faults.names): an SPDM request code (KEY_EXCHANGE), an
             IDE_KM object (KEY_PROG) or a TDISP request (LOCK_INTERFACE_REQUEST), matched
             on the plaintext in or out of a session; what the rule does to the
             response happens before the responder seals it, so the requester sees a
             well-formed record carrying a wrong message

Some kinds only make sense for one message; they default `match` to it (KINDS_FOR).
The selector is one of nth (1-based occurrence among matching requests; default
nth=1), every, or probability with a seed (a private RNG, so a run is reproducible).

`doe_delay` is not a rule but the DOE mailbox's own timing knob
(`TeeIoEndpoint.delay_doe_responses`): the next `count` SPDM DOE responses become ready
`delay_ms` after GO.  It is written like a rule everywhere a rule is (`--fault
doe_delay:delay_ms=1500,count=1`, a `[[fault]]` table, `vdev ctl faults arm`) and kept
in `FaultPlan.doe_delay`.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spdm.codes import ErrorCode, Req
from spdm.responder import NO_DELAY_REQUESTS
from tdisp.codes import ErrorCode as TdispErrorCode
from tdisp.idekm_messages import KpAckStatus
from vdev.faults.mutate import MAC_FIELD, response_fields
from vdev.faults.names import IDEKM_NAMES, SPDM_NAMES, TDISP_NAMES, protocol_of

KINDS = (
    "drop", "delay", "doe_error", "corrupt", "truncate", "error", "not_ready", "duplicate",
    "replay", "wrong_version", "wrong_slot", "wrong_chain", "changed_measurement",
    "tdi_error", "wrong_nonce", "report_mismatch",
)
MATCH_ANY, MATCH_SECURED = "doe", "secured"
TRANSPORT_MATCHES = frozenset({MATCH_ANY, MATCH_SECURED})
# Kinds that act on whole DOE objects / records, so they also take a transport match.
TRANSPORT_KINDS = frozenset(
    {"drop", "delay", "doe_error", "corrupt", "truncate", "error", "duplicate", "replay"})
# Which parameters each kind takes (beyond kind, match and the selector).
PARAMS: dict[str, frozenset[str]] = {
    "drop": frozenset(), "doe_error": frozenset(), "not_ready": frozenset(),
    "duplicate": frozenset(), "replay": frozenset(), "wrong_chain": frozenset(),
    "tdi_error": frozenset(), "wrong_nonce": frozenset(), "report_mismatch": frozenset(),
    "delay": frozenset({"delay_ms"}), "corrupt": frozenset({"offset", "field"}),
    "truncate": frozenset({"length"}), "error": frozenset({"code"}),
    "wrong_version": frozenset({"version"}), "wrong_slot": frozenset({"slot"}),
    "changed_measurement": frozenset({"index"}),
}
# Kinds tied to particular requests: the allowed names, the first being the default.
KINDS_FOR: dict[str, tuple[str, ...]] = {
    "wrong_chain": ("GET_CERTIFICATE",),
    "wrong_slot": ("GET_CERTIFICATE", "CHALLENGE"),
    "changed_measurement": ("GET_MEASUREMENTS", "CHALLENGE", "KEY_EXCHANGE"),
    "wrong_nonce": ("LOCK_INTERFACE_REQUEST",),
    "report_mismatch": ("GET_DEVICE_INTERFACE_REPORT",),
    "tdi_error": tuple(sorted(TDISP_NAMES)),
    "not_ready": tuple(sorted(n for n in SPDM_NAMES if Req[n] not in NO_DELAY_REQUESTS)),
    "wrong_version": tuple(sorted(SPDM_NAMES | TDISP_NAMES)),
}
# What MATCH means when a rule leaves it out (the request such a fault is usually about).
DEFAULT_MATCH = {kind: names[0] for kind, names in KINDS_FOR.items()
                 if kind in ("wrong_chain", "wrong_slot", "changed_measurement", "wrong_nonce",
                             "report_mismatch")}
SELECTORS = frozenset({"nth", "every", "probability", "seed"})


class FaultPlanError(ValueError):
    """A rule is invalid; the message names the rule and the field."""


DOE_DELAY = "doe_delay"
DOE_DELAY_FIELDS = frozenset({"kind", "delay_ms", "count"})


@dataclass(frozen=True)
class DoeDelay:
    """Hold the next `count` SPDM DOE responses back `delay_ms` after GO (BUSY till then)."""

    delay_ms: int
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"kind": DOE_DELAY, "delay_ms": self.delay_ms, "count": self.count}


def doe_delay_from_dict(data: dict[str, Any], where: str = "fault") -> DoeDelay:
    where = f"{where} ({DOE_DELAY})"
    unknown = sorted(set(data) - DOE_DELAY_FIELDS)
    if unknown:
        raise FaultPlanError(f"{where}: field {unknown[0]!r}: unknown for kind 'doe_delay' "
                             f"(allowed: count, delay_ms, kind; it holds every SPDM DOE "
                             f"response alike, so it takes no match or selector)")
    if "delay_ms" not in data:
        raise FaultPlanError(f"{where}: field 'delay_ms': required for kind 'doe_delay'")
    return DoeDelay(_int(where, "delay_ms", data["delay_ms"], 0),
                    _int(where, "count", data.get("count", 1), 0))


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
    code: int = ErrorCode.UNSPECIFIED  # error: SPDM, TDISP or KP_ACK status code
    field_name: str = ""  # corrupt: a message field, "signature" or "mac" (else offset)
    version: int | None = None  # wrong_version: the version to claim (None: another one)
    slot: int | None = None  # wrong_slot: the SlotID to claim (None: the next one)
    index: int | None = None  # changed_measurement: the block (None: every block)
    seen: int = field(default=0, compare=False)  # matching requests so far
    fired: int = field(default=0, compare=False)
    _rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def layer(self) -> str:
        return "transport" if self.match in TRANSPORT_MATCHES else "message"

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
            value = getattr(self, "field_name" if name == "field" else name)
            if value is None or (name == "field" and not value) \
                    or (name == "offset" and self.field_name):
                continue  # not given: the kind's default applies (shown by omission)
            out[name] = code_name(self.match, value) if name == "code" else value
        out.update(seen=self.seen, fired=self.fired)
        return out


def _int(where: str, name: str, value: Any, minimum: int | None = None) -> int:
    if type(value) is not int or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise FaultPlanError(f"{where}: field {name!r}: expected an integer{bound}, "
                             f"got {value!r}")
    return value


def _code_enum(match: str) -> type[ErrorCode] | type[TdispErrorCode] | type[KpAckStatus]:
    """What `error` answers with: TDISP_ERROR for a TDISP request (§11.3.17), a KP_ACK
    status for KEY_PROG (§6.33.3), an SPDM ERROR otherwise."""
    if protocol_of(match) == "tdisp":
        return TdispErrorCode
    if match == "KEY_PROG":
        return KpAckStatus
    return ErrorCode


def code_name(match: str, code: int) -> str | int:
    enum_cls = _code_enum(match)
    return enum_cls(code).name if code in enum_cls._value2member_map_ else code


def _code(where: str, match: str, code: Any) -> int:
    enum_cls = _code_enum(match)
    limit = 0xFFFFFFFF if enum_cls is TdispErrorCode else 0xFF
    if isinstance(code, str):
        name = code.upper().replace("-", "_")
        # Accept the spec's CamelCase spelling too ("Busy", "ResponseNotReady").
        by_camel = {n.replace("_", ""): n for n in enum_cls.__members__}
        name = name if name in enum_cls.__members__ else by_camel.get(name, "")
        if not name:
            raise FaultPlanError(f"{where}: field 'code': {code!r} is not one of "
                                 f"{', '.join(enum_cls.__members__)}")
        value = int(enum_cls[name])
    else:
        value = _int(where, "code", code, 0)
        if value > limit:
            raise FaultPlanError(f"{where}: field 'code': {code} is too large")
    if enum_cls is KpAckStatus and value == KpAckStatus.SUCCESS:
        raise FaultPlanError(f"{where}: field 'code': KP_ACK status SUCCESS is no error")
    return value


def _match(where: str, kind: str, data: dict[str, Any]) -> str:
    allowed = KINDS_FOR.get(kind)
    match = data.get("match", DEFAULT_MATCH.get(kind))
    names = SPDM_NAMES | IDEKM_NAMES | TDISP_NAMES
    if match is None:
        raise FaultPlanError(f"{where}: field 'match': required for {kind!r} (a request "
                             f"name such as KEY_EXCHANGE, KEY_PROG or "
                             f"START_INTERFACE_REQUEST, 'secured' or 'doe')")
    if not isinstance(match, str) or match not in names | TRANSPORT_MATCHES:
        raise FaultPlanError(f"{where}: field 'match': {match!r} is not a request name (an "
                             f"SPDM request code such as KEY_EXCHANGE, an IDE_KM object such "
                             f"as KEY_PROG, a TDISP request such as LOCK_INTERFACE_REQUEST), "
                             f"'secured' or 'doe'")
    if match in TRANSPORT_MATCHES and kind not in TRANSPORT_KINDS:
        raise FaultPlanError(f"{where}: field 'match': {kind!r} acts on one message; "
                             f"name the request instead of {match!r}")
    if allowed is not None and match not in allowed:
        shown = ", ".join(allowed) if len(allowed) <= 4 else f"{allowed[0]}, ..."
        raise FaultPlanError(f"{where}: field 'match': {kind!r} applies to {shown}, "
                             f"not {match}")
    return match


def _check_field(where: str, match: str, name: str) -> None:
    """`corrupt field=NAME` must name a field of the response to `match` (or the record's
    MAC), known from the response's declaration, so a typo is refused here rather than
    found "not injected" at run time."""
    if match in TRANSPORT_MATCHES:
        if match == MATCH_SECURED and name == MAC_FIELD:
            return
        raise FaultPlanError(
            f"{where}: field 'field': {name!r}: " + (
                "only secured records carry a MAC (match 'secured')" if name == MAC_FIELD
                else f"match {match!r} corrupts whole DOE objects by offset; name the "
                     f"request (e.g. KEY_EXCHANGE) to corrupt a field of its response, or "
                     f"use field=mac with match 'secured'"))
    response, fields = response_fields(match)
    if name not in (*fields, MAC_FIELD):
        raise FaultPlanError(
            f"{where}: field 'field': {response} (the response to {match}) has no field "
            f"{name!r}; its fields: {', '.join(fields)}, or 'mac' (the MAC of the secured "
            f"record carrying it)")


def rule_from_dict(data: dict[str, Any], where: str = "fault") -> FaultRule:
    """Validate one rule (TOML table, control-socket JSON, parsed --fault spec)."""
    if not isinstance(data, dict):
        raise FaultPlanError(f"{where}: expected a table/object, got {data!r}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise FaultPlanError(f"{where}: field 'kind': {kind!r} is not one of "
                             f"{', '.join((*KINDS, DOE_DELAY))}")
    where = f"{where} ({kind})"
    match = _match(where, kind, data)
    allowed = {"kind", "match"} | SELECTORS | PARAMS[kind]
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise FaultPlanError(f"{where}: field {unknown[0]!r}: unknown for kind {kind!r} "
                             f"(allowed: {', '.join(sorted(allowed))})")
    rule = FaultRule(kind=kind, match=match)
    _selector(where, data, rule)
    if "delay_ms" in data:
        rule.delay_ms = _int(where, "delay_ms", data["delay_ms"], 0)
    elif kind == "delay":
        raise FaultPlanError(f"{where}: field 'delay_ms': required for kind 'delay'")
    if "offset" in data:
        rule.offset = _int(where, "offset", data["offset"])
    if "field" in data:
        if "offset" in data:
            raise FaultPlanError(f"{where}: field 'field': give either offset or field")
        if not isinstance(data["field"], str) or not data["field"]:
            raise FaultPlanError(f"{where}: field 'field': expected a field name, "
                                 f"'signature' or 'mac', got {data['field']!r}")
        rule.field_name = data["field"]
        _check_field(where, match, rule.field_name)
    if "length" in data:
        rule.length = _int(where, "length", data["length"], 0)
    elif kind == "truncate":
        raise FaultPlanError(f"{where}: field 'length': required for kind 'truncate'")
    if "code" in data:
        rule.code = _code(where, match, data["code"])
    elif kind == "error":
        rule.code = {ErrorCode: ErrorCode.UNSPECIFIED, TdispErrorCode: TdispErrorCode.UNSPECIFIED,
                     KpAckStatus: KpAckStatus.UNSPECIFIED_FAILURE}[_code_enum(match)]
    if "version" in data:
        rule.version = _int(where, "version", data["version"], 0)
        if rule.version > 0xFF:
            raise FaultPlanError(f"{where}: field 'version': {rule.version} does not fit a byte")
    if "slot" in data:
        rule.slot = _int(where, "slot", data["slot"], 0)
        if rule.slot > 0x0F:
            raise FaultPlanError(f"{where}: field 'slot': SlotID is 4 bits, got {rule.slot}")
    if "index" in data:
        rule.index = _int(where, "index", data["index"], 1)
        if rule.index > 0xFE:
            raise FaultPlanError(f"{where}: field 'index': measurement index is 1..254")
    return rule


def _selector(where: str, data: dict[str, Any], rule: FaultRule) -> None:
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


def _scalar(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def spec_to_dict(spec: str) -> dict[str, Any]:
    """`KIND[:MATCH][:nth=N|every|p=0.5,seed=1][,PARAM=VALUE...]` as a rule table; MATCH
    may be left out (or empty) for the kinds tied to one request (wrong_nonce,
    report_mismatch, ...) and for doe_delay (`doe_delay:delay_ms=1500,count=2`)."""
    where = f"--fault {spec!r}"
    parts = spec.split(":")
    if len(parts) == 2 and ("=" in parts[1] or parts[1] == "every"):
        # KIND:OPTIONS or KIND:MATCH,OPTIONS (a request name never holds '=').
        first, _, rest = parts[1].partition(",")
        match = "" if "=" in first or first == "every" else first
        parts = [parts[0], match, rest if match else parts[1]]
    if len(parts) > 3 or not parts[0]:
        raise FaultPlanError(f"{where}: expected KIND[:MATCH][:OPTIONS]")
    data: dict[str, Any] = {"kind": parts[0]}
    if len(parts) > 1 and parts[1]:
        data["match"] = parts[1]
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
    return data


def parse_spec(spec: str) -> FaultRule:
    """One `--fault` rule (spec_to_dict's grammar)."""
    return rule_from_dict(spec_to_dict(spec), f"--fault {spec!r}")


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)
    doe_delay: DoeDelay | None = None

    def add(self, data: dict[str, Any], where: str) -> None:
        """One rule table, or the doe_delay setting (the last one given wins)."""
        if isinstance(data, dict) and data.get("kind") == DOE_DELAY:
            self.doe_delay = doe_delay_from_dict(data, where)
        else:
            self.rules.append(rule_from_dict(data, where))

    def extend(self, other: FaultPlan) -> None:
        self.rules.extend(other.rules)
        self.doe_delay = other.doe_delay or self.doe_delay

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
        plan = cls()
        for i, t in enumerate(tables, 1):
            plan.add(t, f"{source}: fault #{i}")
        return plan

    @classmethod
    def load(cls, path: str | Path) -> FaultPlan:
        p = Path(path)
        return cls.from_toml(p.read_text(), str(p))

    @classmethod
    def from_specs(cls, specs: list[str]) -> FaultPlan:
        plan = cls()
        for spec in specs:
            plan.add(spec_to_dict(spec), f"--fault {spec!r}")
        return plan

    def select(self, name: str, layer: str = "message") -> FaultRule | None:
        """Every matching rule of `layer` counts this request; the first that fires wins."""
        chosen = None
        for rule in self.rules:
            if rule.layer == layer and rule.matches(name) and rule.select() \
                    and chosen is None:
                chosen = rule
        return chosen
