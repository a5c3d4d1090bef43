"""Measurement reference values: what the TSM expects the device to measure.

File format (TOML or JSON, chosen by the file suffix; `.json` is JSON, anything else
TOML).  Every key is optional:

    # TOML
    version = "vdev 0.1.0"     # expected version string: compared with the raw value of
                               # the VERSION measurement (DMTF type 0x06, DSP0274 1.2
                               # Table 'DMTFSpecMeasurementValueType'), UTF-8
    unlisted = "allow"         # measurement indices without a reference value:
                               # "allow" (reported as "no reference") or "fail"

    [measurements]             # index -> expected value(s), lowercase or uppercase hex
    1 = "3f5e..."              # the digest (or the raw bit stream) the device reports
    2 = ["aa11...", "bb22..."] # any one of these (e.g. two accepted firmware releases)
    7 = { text = "vdev 0.1.0" }  # raw bit-stream value given as UTF-8 text

    // JSON: {"version": "vdev 0.1.0", "unlisted": "allow",
    //        "measurements": {"1": "3f5e...", "2": ["aa11...", "bb22..."],
    //                         "7": {"text": "vdev 0.1.0"}}}

Values are compared with the measurement *as reported*: a digest under the negotiated
MeasurementHashAlgo, or the raw bit stream when the device reports one (DSP0274 §10.11
MEASUREMENTS, DMTFSpecMeasurementValueType bit 7).  A listed index the device does not
report fails.  `evaluate` returns one verdict per index plus the first failure.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spdm.measurements import RAW_BIT_STREAM_FLAG, MeasurementType, ParsedBlock
from tsm.errors import PolicyError as PolicyError  # raised here


@dataclass(frozen=True)
class ReferenceValues:
    measurements: Mapping[int, tuple[bytes, ...]] = field(default_factory=dict)
    version: str | None = None
    unlisted_allowed: bool = True

    @classmethod
    def load(cls, path: str | Path) -> ReferenceValues:
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"{p}: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceValues:
        unknown = set(data) - {"version", "unlisted", "measurements"}
        if unknown:
            raise PolicyError(f"unknown keys {sorted(unknown)}")
        version = data.get("version")
        if version is not None and not isinstance(version, str):
            raise PolicyError("version must be a string")
        unlisted = data.get("unlisted", "allow")
        if unlisted not in ("allow", "fail"):
            raise PolicyError('unlisted must be "allow" or "fail"')
        raw = data.get("measurements", {})
        if not isinstance(raw, Mapping):
            raise PolicyError("measurements must be a table/object")
        meas: dict[int, tuple[bytes, ...]] = {}
        for key, value in raw.items():
            try:
                index = int(key)
            except ValueError:
                raise PolicyError(f"measurement index {key!r} is not a number") from None
            if not 1 <= index <= 0xFE:  # DSP0274: 0 and 0xFF are not block indices
                raise PolicyError(f"measurement index {index} outside 1..254")
            meas[index] = tuple(_values(index, value))
        return cls(meas, version, unlisted == "allow")

    def evaluate(self, blocks: Iterable[ParsedBlock]) -> tuple[list[dict[str, Any]], str | None]:
        """Verdicts per measurement index and the first failure (None when all pass)."""
        by_index = {b.index: b for b in blocks}
        verdicts: list[dict[str, Any]] = []
        failure: str | None = None
        for index in sorted(set(by_index) | set(self.measurements)):
            block = by_index.get(index)
            expected = self.measurements.get(index)
            v: dict[str, Any] = {"index": index}
            if block is None:
                v["verdict"] = "missing"
                msg = f"index {index}: expected a measurement, the device reported none"
            elif expected is None:
                v["verdict"] = "no reference" if self.unlisted_allowed else "unlisted"
                msg = f"index {index}: no reference value (policy: unlisted = \"fail\")"
            elif block.value in expected:
                v["verdict"] = "match"
                msg = ""
            else:
                v["verdict"] = "mismatch"
                want = " or ".join(e.hex() for e in expected)
                msg = f"index {index}: expected {want}, got {block.value.hex()}"
            if v["verdict"] in ("missing", "unlisted", "mismatch"):
                v["reason"] = msg
                failure = failure or msg
            verdicts.append(v)
        if self.version is not None:
            got = _version_string(by_index.values())
            v = {"index": None, "check": "version", "expected": self.version, "got": got}
            if got == self.version:
                v["verdict"] = "match"
            else:
                v["verdict"] = "mismatch"
                msg = (
                    f"version: expected {self.version!r}, got {got!r}"
                    if got is not None
                    else f"version: expected {self.version!r}, the device reports no "
                    "VERSION measurement (DMTF type 0x06)"
                )
                v["reason"] = msg
                failure = failure or msg
            verdicts.append(v)
        return verdicts, failure


def _values(index: int, value: Any) -> Iterable[bytes]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise PolicyError(f"measurement {index}: empty list")
    for item in items:
        if isinstance(item, str):
            try:
                yield bytes.fromhex(item)
            except ValueError:
                raise PolicyError(f"measurement {index}: {item!r} is not hex") from None
        elif isinstance(item, Mapping) and set(item) == {"text"} and isinstance(
            item["text"], str
        ):
            yield item["text"].encode()
        elif isinstance(item, Mapping) and set(item) == {"hex"} and isinstance(item["hex"], str):
            yield from _values(index, item["hex"])
        else:
            raise PolicyError(f"measurement {index}: expected hex string, list or {{text=...}}")


def _version_string(blocks: Iterable[ParsedBlock]) -> str | None:
    for b in blocks:
        if b.value_type & ~RAW_BIT_STREAM_FLAG == MeasurementType.VERSION and b.is_raw:
            return b.value.decode("utf-8", "replace")
    return None
