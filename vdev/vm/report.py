"""A guest run's results: the summary a person reads and the KTAP a CI reads.

Checks come in groups (foundation, connect or the kernel's own TSM, the
servers, the user's scripts).  When the run has a first failure
(vdev.vm.first_failure: QEMU's exit, a panic, a failed insmod), it is named
first with its own message and the checks that failed after it are marked
"not evaluated" instead of each being reported as one more failure.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vdev.vm.checks import Check
from vdev.vm.first_failure import FirstFailure, first_failure
from vdev.vm.ktap import KtapTest, script_test, write
from vdev.vm.qemu import MARK, VmResult

#: The narrowest terminal the summary is laid out for.
SUMMARY_WIDTH = 80


def _wrapped(head: str, text: str, columns: int) -> list[str]:
    """`head` then `text`, wrapped to `columns` - 1 with the continuation lines under
    the text's first column; words longer than a line (paths) stay whole."""
    body = textwrap.wrap(text, max(columns - 1 - len(head), 20),
                         break_long_words=False, break_on_hyphens=False) or [""]
    pad = " " * len(head)
    return [f"{head}{body[0]}".rstrip(), *(f"{pad}{line}" for line in body[1:])]


def run_first_failure(res: VmResult) -> FirstFailure | None:
    return first_failure(console=res.console, stderr=res.stderr, returncode=res.returncode,
                         timed_out=res.timed_out, booted=res.value("boot") is not None)


@dataclass
class ScriptRun:
    """One program added with --initramfs-add, as the guest ran it."""

    name: str
    rc: int | None
    output: list[str] = field(default_factory=list)


def user_scripts(res: VmResult) -> list[ScriptRun]:
    """The added programs' console output between /init's start and done marks."""
    runs: list[ScriptRun] = []
    current: ScriptRun | None = None
    for raw in res.console:
        line = raw.rstrip("\r\n")
        i = line.find(MARK)
        if i >= 0:
            key, _, value = line[i + len(MARK):].partition(" ")
            if key == "user_script":
                current = ScriptRun(value.strip(), None)
                runs.append(current)
                continue
            if key == "user_script_done" and current is not None:
                rc = value.rsplit(" ", 1)[-1]
                current.rc = int(rc) if rc.lstrip("-").isdigit() else None
                current = None
                continue
        if current is not None:
            current.output.append(line)
    return runs


def script_checks(runs: Sequence[ScriptRun]) -> list[Check]:
    return [Check(f"script {r.name}", r.rc == 0,
                  "did not finish" if r.rc is None else f"exit status {r.rc}") for r in runs]


@dataclass
class RunReport:
    groups: list[tuple[str, list[Check]]]
    first: FirstFailure | None = None
    scripts: list[ScriptRun] = field(default_factory=list)

    @property
    def checks(self) -> list[Check]:
        return [c for _, checks in self.groups for c in checks]

    @property
    def ok(self) -> bool:
        return self.first is None and all(c.ok for c in self.checks)

    def ktap(self) -> list[KtapTest]:
        tests = []
        if self.first is not None:
            tests.append(KtapTest("first failure", ok=False, error=str(self.first)))
        skip = f"not evaluated after the first failure ({self.first.stage})" \
            if self.first else None
        runs = {f"script {r.name}": r for r in self.scripts}
        for group, checks in self.groups:
            subtests = []
            for c in checks:
                if c.name in runs:
                    r = runs[c.name]
                    t = script_test(r.name, r.rc, r.output)
                else:
                    t = KtapTest(c.name, ok=c.ok, diagnostics=[c.detail])
                if not c.ok and skip:
                    t = KtapTest(c.name, skip=skip, diagnostics=[c.detail])
                subtests.append(t)
            if subtests:
                tests.append(KtapTest(group, subtests=subtests))
        return tests

    def write_ktap(self, path: Path) -> Path:
        return write(path, self.ktap())

    def print_summary(self, accel: str, workdir: Path, say: Callable[[str], None],
                      columns: int | None = None) -> bool:
        """The summary, no line wider than the terminal (`columns`; at least
        SUMMARY_WIDTH, the terminal's width by default) where it can be helped: a long
        detail wraps under its own column (a path is never cut)."""
        if columns is None:
            columns = shutil.get_terminal_size((SUMMARY_WIDTH, 24)).columns
        columns = max(columns, SUMMARY_WIDTH)
        checks = self.checks
        shown = [c for c in checks if c.ok or self.first is None]
        width = max([len(c.name) for c in shown] + [13])
        rule = SUMMARY_WIDTH - 2

        def row(head: str, text: str) -> None:
            for line in _wrapped(head, text, columns):
                say(line)

        say("")
        say("=" * rule)
        row(" ", f"vdev summary (QEMU accel={accel}; logs in {workdir})")
        say("-" * rule)
        if self.first is not None:
            row(f" {'FIRST FAILURE':<{width + 6}}  ", str(self.first))
            say("-" * rule)
        for c in shown:
            label = "INFO" if c.info else "PASS" if c.ok else "FAIL"
            row(f" {label}  {c.name:<{width}}  ", c.detail)
        say("-" * rule)
        passed = sum(c.ok for c in checks)
        skipped = len(checks) - len(shown)
        tail = f"; {skipped} not evaluated after the first failure" if skipped else ""
        row(" ", f"{passed} of {len(checks)} checks held{tail}: {'OK' if self.ok else 'FAILED'}")
        row(" ", f"KTAP: {workdir / 'results.ktap'}")
        say("=" * rule)
        return self.ok
