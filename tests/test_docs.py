"""The repository explains itself: every citation resolves inside it.

Code, tests, scripts, profiles and docs cite facts as "docs/<page>.md §N" or by a
public specification section.  These tests fail when a tracked file cites something
the repository does not contain (a document outside it, a path of some machine, a
"reference §N" with no document named) or a docs page or section that does not
exist, and when the README stops being the front door.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

# Citations of documents the repository does not contain, and paths of one machine.
FORBIDDEN = [
    (re.compile(r"\bshared/(?:reference|design)"), "a document outside the repository"),
    (re.compile(r"(?<![\w.$}~-])/(?:work|root|home)/"), "an absolute path of a machine"),
    (re.compile(r"\breference\s*(?:§|,\s*section)", re.IGNORECASE),
     "'reference §N' names no document: cite docs/<page>.md §N or a specification"),
]
# Documents that only ever existed outside the repository: citing them by bare name is
# as unresolvable as citing their path.
OUTSIDE_DOCUMENTS = ("design.md", "spdm-doe-ide-tdisp.md")

# "docs/page.md", optionally followed by sections: "§3", "§3.5, §7", "§4 and §6".
SECTION_LIST = r"(?:\s*§\s*\d+(?:\.\d+)*(?:\s*(?:,|and)\s*§\s*\d+(?:\.\d+)*)*)?"
DOCS_CITATION = re.compile(r"(?<![\w/.-])docs/([\w-]+\.md)(" + SECTION_LIST + ")")
# A Markdown link to a .md file, optionally followed by sections.
MD_LINK = re.compile(r"\]\(([^)\s#]+\.md)(?:#[^)]*)?\)(" + SECTION_LIST + ")")
SECTION_NUMBER = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)


@functools.cache
def tracked_text_files() -> tuple[Path, ...]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                         check=True).stdout.decode()
    files = []
    for name in out.split("\0"):
        path = REPO / name
        if not name or name == THIS or not path.is_file():
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        files.append(path)
    return tuple(files)


def docs_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


@functools.cache
def sections_of(page: Path) -> frozenset[str]:
    return frozenset(HEADING.findall(page.read_text(encoding="utf-8")))


def _where(path: Path, text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"{path.relative_to(REPO)}:{line}"


def _check_sections(page: Path, sections: str, where: str) -> list[str]:
    problems = []
    for number in SECTION_NUMBER.findall(sections):
        if number not in sections_of(page):
            problems.append(f"{where}: {page.relative_to(REPO)} has no section §{number}")
    return problems


def citation_problems(path: Path, text: str) -> list[str]:
    """Every citation in `text` (the content of `path`) that does not resolve."""
    problems = []
    for pattern, why in FORBIDDEN:
        for m in pattern.finditer(text):
            problems.append(f"{_where(path, text, m.start())}: {m.group(0)!r}: {why}")
    for m in DOCS_CITATION.finditer(text):
        page = DOCS / m.group(1)
        where = _where(path, text, m.start())
        if not page.is_file():
            problems.append(f"{where}: docs/{m.group(1)} does not exist")
        else:
            problems += _check_sections(page, m.group(2), where)
    if path.suffix == ".md":
        for m in MD_LINK.finditer(text):
            target = (path.parent / m.group(1)).resolve()
            where = _where(path, text, m.start())
            if not target.is_file():
                problems.append(f"{where}: link to {m.group(1)}, which does not exist")
            elif m.group(2):
                problems += _check_sections(target, m.group(2), where)
    # A document that only existed outside the repository, named bare, cites nothing.  A
    # docs page named without "docs/" is ambiguous outside docs/ (inside docs/, pages
    # name each other with Markdown links, checked above).
    scan = re.sub(r"\[[^\]]*\]\([^)]*\)", "", text) if path.suffix == ".md" else text
    pages = {p.name for p in docs_pages()} - {"README.md"}
    for name in sorted(pages | set(OUTSIDE_DOCUMENTS)):
        for m in re.finditer(r"(?<![\w/.-])" + re.escape(name), scan):
            where = _where(path, scan, m.start())
            if name in OUTSIDE_DOCUMENTS:
                problems.append(f"{where}: {name!r} is not part of the repository")
            elif path.parent != DOCS:
                problems.append(f"{where}: bare {name!r}: cite it as docs/{name}")
    return problems


def test_no_citation_points_outside_the_repository() -> None:
    problems = []
    for path in tracked_text_files():
        problems += citation_problems(path, path.read_text(encoding="utf-8"))
    assert problems == []


def test_every_docs_page_has_numbered_sections() -> None:
    for page in docs_pages():
        if page.name == "README.md":
            continue
        assert sections_of(page), f"{page.name} has no numbered sections to cite"


def test_readme_starts_with_the_two_commands() -> None:
    head = (REPO / "README.md").read_text(encoding="utf-8").splitlines()[:40]
    assert any(line.startswith("make run") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_readme_layout_table_matches_the_tree() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = {p.rstrip("/") for row in re.findall(r"^\| (.+?) \|", layout, re.MULTILINE)
              for p in re.findall(r"`([\w./-]+/)`", row)}
    assert listed, "no layout table"
    for p in sorted(listed):
        assert (REPO / p).is_dir(), f"README layout lists {p}/, which does not exist"
    tracked = {f.relative_to(REPO).parts for f in tracked_text_files()}
    top = {parts[0] for parts in tracked if len(parts) > 1 and not parts[0].startswith(".")}
    vdev = {f"vdev/{parts[1]}" for parts in tracked
            if parts[0] == "vdev" and len(parts) > 2}
    missing = sorted((top | vdev) - listed - {"vdev"})
    assert missing == [], f"directories missing from the README layout table: {missing}"


# ---- the checker itself -----------------------------------------------------------------

# A notes directory outside the repository, spelled in parts so that these examples
# of what the checker rejects are not themselves found as such citations.
OUTSIDE_NOTES = "/".join(("shared", "reference"))


@pytest.mark.parametrize("line", [
    f"see {OUTSIDE_NOTES}/vfio-user-qemu.md §1",
    f"Design (reference: /work/{OUTSIDE_NOTES}/vfio-user-qemu.md):",
    "ids wrap at 16 bits (reference §7.4)",
    "the tree lives in /home/someone/linux",
    "docs/no-such-page.md §1",
    "docs/vfio-user-qemu.md §99",
    "docs/vfio-user-qemu.md §2.1, §98",
    "as design.md says",
    "see vfio-user-qemu.md §3",
])
def test_checker_flags(line: str) -> None:
    assert citation_problems(REPO / "vdev" / "example.py", line)


@pytest.mark.parametrize("line", [
    "docs/vfio-user-qemu.md §2.1 and §10.1",
    "QEMU's reply buffer (docs/vfio-user-qemu.md §3)",
    "PCIe 6.2 §7.9.26; DSP0274 1.3 §10.13",
    'local h="$1/root/usr/src/linux-headers-$KVER"',
    "~/.local/state/vdev/identity",
])
def test_checker_accepts(line: str) -> None:
    assert citation_problems(REPO / "vdev" / "example.py", line) == []


def test_checker_resolves_markdown_links(tmp_path: Path) -> None:
    page = DOCS / "architecture.md"
    assert citation_problems(page, "[x](linux-pci-tsm.md) §7") == []
    assert citation_problems(page, "[x](linux-pci-tsm.md) §77")
    assert citation_problems(page, "[x](no-such.md)")
