"""The lines `vdev tsm serve` logs after each operation (what `make run` shows as
[tsm]), from a real TSM model run against the in-process device."""

from __future__ import annotations

from tests.helpers.tsm_rig import EXPECTED, make_device, make_tsm, ok
from tsm.mailbox_protocol import Op
from vdev.cli.tsm_serve import evidence_summary


def test_report_lines_number_the_ranges_and_start_names_the_report_check() -> None:
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    ok(tsm.lock(0, expected_mmio=EXPECTED), dev)
    done = ok(tsm.report(0), dev)
    lines = evidence_summary(Op.REPORT, dict(done.evidence or {}))
    assert lines[0] == "TDI 01:00.0: CONFIG_LOCKED; interface report matches 2 expected BAR(s)"
    ranges = lines[1:]
    assert len(ranges) == 5
    assert [line.split(":", 1)[0] for line in ranges] == [
        f"  MMIO range {n} of 5 (range ID {rid})" for n, rid in
        enumerate((0, 0, 0, 0, 2), 1)], ranges
    assert ranges[1].endswith("+0x1000 MSIX_TABLE"), ranges
    done = ok(tsm.start(0), dev)
    assert evidence_summary(Op.START, dict(done.evidence or {})) == [
        "TDI 01:00.0: RUN; interface report matches 2 expected BAR(s)"]
