"""`make run`'s summary at 80 columns: long details wrap under their own column."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdev.vm.checks import Check
from vdev.vm.report import SUMMARY_WIDTH, RunReport

REPORT_DETAIL = ("4 MMIO ranges from 0xfe400000 (guest BAR0 0xfe400000): 1 page TEE, "
                 "1 page MSIX_TABLE, 1 page MSIX_PBA, 13 pages TEE")
LONG = " ".join(f"word{n:03d}" for n in range(40))  # 319 characters


def summary(checks: list[Check], workdir: Path = Path("/w"),
            columns: int = SUMMARY_WIDTH) -> list[str]:
    lines: list[str] = []
    RunReport([("connect", checks)]).print_summary("tcg", workdir, lines.append, columns)
    return lines


def row(lines: list[str], head: str) -> list[str]:
    """The lines of the row that starts with `head`, continuation lines included."""
    first = next(i for i, line in enumerate(lines) if line.startswith(head))
    end = next(i for i in range(first + 1, len(lines)) if not lines[i].startswith("      "))
    return lines[first:end]


def test_a_long_detail_wraps_under_its_column_and_keeps_every_word() -> None:
    lines = summary([Check("interface report matches BAR0", True, REPORT_DETAIL),
                     Check("long", False, LONG), Check("short", True, "fine")])
    assert all(len(line) < SUMMARY_WIDTH for line in lines), \
        [line for line in lines if len(line) >= SUMMARY_WIDTH]
    report = row(lines, " PASS  interface report matches BAR0  ")
    column = len(" PASS  interface report matches BAR0  ")
    assert len(report) > 1
    assert all(line[:column].strip() == "" and line[column] != " " for line in report[1:])
    assert " ".join(line[column:] for line in report) == REPORT_DETAIL
    long = row(lines, " FAIL  long")
    assert " ".join(line[column:] for line in long).split() == LONG.split()
    assert row(lines, " PASS  short") == [" PASS  short" + " " * (column - 12) + "fine"]
    assert " 2 of 3 checks held: FAILED" in lines


def test_a_path_longer_than_the_line_is_not_cut() -> None:
    deep = Path("/" + "/".join(["a-directory-with-a-long-name"] * 4))
    lines = summary([Check("ok", True, "yes")], deep)
    assert f" {deep})" in lines, lines  # alone on its line, whole
    assert f" {deep / 'results.ktap'}" in lines, lines


def test_a_wider_terminal_keeps_rows_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    lines: list[str] = []
    RunReport([("c", [Check("interface report matches BAR0", True, REPORT_DETAIL)])]) \
        .print_summary("tcg", Path("/w"), lines.append)
    assert f" PASS  interface report matches BAR0  {REPORT_DETAIL}" in lines
    monkeypatch.setenv("COLUMNS", "40")  # never narrower than 80
    assert summary([Check("x", True, LONG)], columns=40) == \
        summary([Check("x", True, LONG)], columns=80)
