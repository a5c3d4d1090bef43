"""KTAP output of a guest run, as the kernel's own test frameworks print it.

KTAP version 1 (Documentation/dev-tools/ktap.rst): a version line, a plan
`1..N`, one result line per test (`ok N name` / `not ok N name`, optionally
`# SKIP reason` or `# ERROR reason`), diagnostic lines `# ...`, and nested
tests indented by two spaces with their own version line and plan, before
their parent's result line.  KUnit adds a `# Subtest: name` diagnostic
after a nested version line and per-suite totals; we print both, so
kernel CI systems (KernelCI, LAVA) and tools/testing/kunit/kunit.py read a
run without an adapter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

INDENT = "  "


@dataclass
class KtapTest:
    """One test: a leaf (a check) or a parent of subtests (a group of checks,
    or a guest script's own KTAP output)."""

    name: str
    ok: bool = True
    skip: str | None = None
    error: str | None = None
    diagnostics: list[str] = field(default_factory=list)
    subtests: list[KtapTest] = field(default_factory=list)
    # A KTAP document the test printed itself (a guest script's own results),
    # nested verbatim one level down.
    document: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """A parent fails when any subtest fails; skipped subtests don't count."""
        if not self.ok:
            return False
        if self.subtests:
            return all(t.passed or t.skip is not None for t in self.subtests)
        top = [m for line in self.document if (m := _TOP_RESULT.match(line))]
        return all(m[1] == "ok" for m in top)


def _clean(text: str) -> str:
    """A description may hold anything but '#' and a newline (ktap.rst)."""
    return re.sub(r"\s+", " ", text.replace("#", "no.")).strip()


def _lines(tests: list[KtapTest], depth: int, suite: str | None) -> list[str]:
    pad = INDENT * depth
    out = [f"{pad}KTAP version 1"]
    if suite is not None:
        out.append(f"{pad}# Subtest: {_clean(suite)}")
    out.append(f"{pad}1..{len(tests)}")
    for n, t in enumerate(tests, start=1):
        if t.subtests:
            out += _lines(t.subtests, depth + 1, t.name)
            out.append(f"{pad}{INDENT}# {_clean(t.name)}: {_totals(t.subtests)}")
        elif t.document:
            out += [pad + INDENT + line for line in t.document]
        out += [f"{pad}# {_clean(d)}" for d in t.diagnostics if d.strip()]
        result = "ok" if t.passed else "not ok"
        directive = ""
        if t.skip is not None:
            directive = f" # SKIP {_clean(t.skip)}".rstrip()
        elif t.error is not None:
            directive = f" # ERROR {_clean(t.error)}".rstrip()
        out.append(f"{pad}{result} {n} {_clean(t.name)}{directive}")
    return out


def _totals(tests: Iterable[KtapTest]) -> str:
    tests = list(tests)
    skip = sum(t.skip is not None for t in tests)
    fail = sum(not t.passed and t.skip is None for t in tests)
    return f"pass:{len(tests) - skip - fail} fail:{fail} skip:{skip} total:{len(tests)}"


def render(tests: list[KtapTest]) -> str:
    """The whole document: top-level tests, their subtests, and the totals line."""
    lines = _lines(tests, 0, None)
    leaves = [leaf for t in tests for leaf in (t.subtests or [t])]
    lines.append(f"# Totals: {_totals(leaves)}")
    return "\n".join(lines) + "\n"


def write(path: Path, tests: list[KtapTest]) -> Path:
    path.write_text(render(tests))
    return path


_VERSION = re.compile(r"^\s*(KTAP version \d+|TAP version \d+)\s*$")
_TOP_RESULT = re.compile(r"^(not ok|ok) \d+\b")


def embedded(lines: Iterable[str]) -> list[str]:
    """The KTAP/TAP document a guest script printed, from its first version
    line on, re-indented so that line starts at column 0 (empty if none)."""
    text = [line.rstrip("\r\n") for line in lines]
    start = next((i for i, line in enumerate(text) if _VERSION.match(line)), None)
    if start is None:
        return []
    base = len(text[start]) - len(text[start].lstrip())
    return [line[base:] if not line[:base].strip() else line.lstrip() for line in text[start:]]


def script_test(name: str, rc: int | None, output: Iterable[str]) -> KtapTest:
    """A guest script as a test: it passes when it exits 0 (and its own KTAP
    results, if it printed any, passed); those results are nested under it."""
    doc = embedded(output)
    if rc is None:
        return KtapTest(name, ok=False, error="did not finish (the guest stopped first)",
                        document=doc)
    return KtapTest(name, ok=rc == 0, diagnostics=[] if rc == 0 else [f"exit status {rc}"],
                    document=doc)
