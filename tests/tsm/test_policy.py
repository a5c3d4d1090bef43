"""Reference-values files, report checks and device references."""

from __future__ import annotations

from pathlib import Path

import pytest

from spdm.measurements import ParsedBlock
from tdisp.interface_report import InterfaceReport
from tdisp.messages import MmioRange
from tsm import DeviceRef, ExpectedBar, PolicyError, ReferenceValues
from tsm.report_check import check_report

TOML = """
version = "vdev 0.1.0"
unlisted = "fail"

[measurements]
1 = "aabb"
2 = ["01", "02"]
7 = { text = "vdev 0.1.0" }
"""


def block(index: int, value: bytes, vtype: int = 0x01) -> ParsedBlock:
    return ParsedBlock(index, 1, vtype, value, b"")


def test_toml_and_json_forms(tmp_path: Path) -> None:
    t = tmp_path / "ref.toml"
    t.write_text(TOML)
    rv = ReferenceValues.load(t)
    assert rv.measurements == {1: (b"\xaa\xbb",), 2: (b"\x01", b"\x02"), 7: (b"vdev 0.1.0",)}
    assert rv.version == "vdev 0.1.0" and not rv.unlisted_allowed
    j = tmp_path / "ref.json"
    j.write_text('{"measurements": {"1": "AABB", "7": {"text": "vdev 0.1.0"}}}')
    assert ReferenceValues.load(j).measurements[1] == (b"\xaa\xbb",)


def test_verdicts() -> None:
    rv = ReferenceValues.from_dict({"version": "vdev 0.1.0", "unlisted": "fail",
                                    "measurements": {"1": "aabb", "2": ["01", "02"]}})
    blocks = [block(1, b"\xaa\xbb"), block(2, b"\x02"), block(3, b"\x00"),
              block(7, b"vdev 0.1.0", 0x86)]
    verdicts, failure = rv.evaluate(blocks)
    assert [v["verdict"] for v in verdicts] == ["match", "match", "unlisted", "unlisted",
                                                "match"]
    assert failure == 'index 3: no reference value (policy: unlisted = "fail")'
    _v, failure = ReferenceValues.from_dict({"measurements": {"2": "03"}}).evaluate(blocks)
    assert failure == "index 2: expected 03, got 02"


@pytest.mark.parametrize("data, msg", [
    ({"measurements": {"x": "00"}}, "not a number"),
    ({"measurements": {"255": "00"}}, "outside 1..254"),
    ({"measurements": {"1": "zz"}}, "not hex"),
    ({"measurements": {"1": []}}, "empty list"),
    ({"unlisted": "maybe"}, "unlisted"),
    ({"versoin": "x"}, "unknown keys"),
])
def test_bad_policies(data: dict[str, object], msg: str) -> None:
    with pytest.raises(PolicyError, match=msg):
        ReferenceValues.from_dict(data)


def test_bad_toml(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("measurements = [")
    with pytest.raises(PolicyError):
        ReferenceValues.load(p)


def test_report_check_rules() -> None:
    bars = [ExpectedBar(0, 0x1000_0000, 0x3000)]
    good = InterfaceReport(2, mmio_ranges=(MmioRange(0x1000_0000, 2, 0, 0),
                                           MmioRange(0x1000_2000, 1, 1, 0)))
    assert check_report(good, bars, 0) is None
    shifted = InterfaceReport(2, mmio_ranges=(MmioRange(0x5000_0000, 3, 0, 0),))
    assert check_report(shifted, bars, 0x4000_0000) is None  # MMIO_REPORTING_OFFSET
    assert "reserved bits" in (check_report(InterfaceReport(0x20), bars, 0) or "")
    bad_attr = InterfaceReport(2, mmio_ranges=(MmioRange(0x1000_0000, 3, 0x10, 0),))
    assert "reserved attribute bits" in (check_report(bad_attr, bars, 0) or "")
    assert "BAR0: missing" in (check_report(InterfaceReport(2), bars, 0) or "")
    gap = InterfaceReport(2, mmio_ranges=(MmioRange(0x1000_0000, 1, 0, 0),
                                          MmioRange(0x1000_2000, 1, 0, 0)))
    assert "where 0x10001000 was expected" in (check_report(gap, bars, 0) or "")


def test_device_ref() -> None:
    d = DeviceRef.parse("0000:01:00.0")
    assert (d.segment, d.bus, d.devfn) == (0, 1, 0) and str(d) == "0000:01:00.0"
    assert d.tdi(2).function_id == 0x0102  # segment 0: bare RID
    e = DeviceRef.parse("0001:3a:1f.7")
    assert e.tdi().function_id == (1 << 24) | (1 << 16) | 0x3AFF
    assert DeviceRef.parse("02:00.1").devfn == 1
    with pytest.raises(ValueError):
        DeviceRef.parse("00:20.0")
    assert ExpectedBar.parse("2:0xfd000000:0x2000") == ExpectedBar(2, 0xFD00_0000, 0x2000)


def test_selective_stream_ids_from_query_registers() -> None:
    from tsm.ide_query import selective_stream_ids

    assert selective_stream_ids((0x42, 0)) == []  # no selective block present
    assert selective_stream_ids((0x40, 0, 0, 7 << 24, 0, 0, 0)) == []  # no Selective IDE
    # Link IDE with 2 TCs (2 link blocks), 2 selective streams, the first with one
    # address association block.
    regs = (0x0001_2003, 0, 0, 0, 0, 0,
            1, 5 << 24, 0, 0, 0, 0, 0, 0,
            0, 9 << 24, 0, 0, 0)
    assert selective_stream_ids(regs) == [5, 9]
