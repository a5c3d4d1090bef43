"""Apply a patch series to a source tree so that a build tree stays incremental.

A build system rebuilds what changed on disk, by modification time.  Going
from one version of a series to the next by unpacking the source again would
touch every file and rebuild everything; instead only the files the old or
the new series touch are rewritten, and only when their content changes.

The pristine content of each file a series touches is kept aside (the
"originals" directory) the first time a series touches it, so any later
series can be applied from the pristine state: the new series is applied to
copies of the originals in a staging directory by `patch`, and the result is
copied over the tree file by file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = ".vdev-series.json"
# Marks an original that did not exist (a file the series creates).
ABSENT_SUFFIX = ".vdev-absent"


class SeriesError(RuntimeError):
    """The series could not be applied; the message names the patch."""


@dataclass(frozen=True)
class Series:
    """An ordered list of patch files (`git format-patch` output)."""

    patches: tuple[Path, ...]

    @classmethod
    def from_dir(cls, directory: Path) -> Series:
        patches = tuple(sorted(directory.glob("*.patch")))
        if not patches:
            raise SeriesError(f"no *.patch files in {directory}")
        return cls(patches)

    def digest(self, *extra: str) -> str:
        """SHA-256 over the patches (names and content) and `extra` strings."""
        h = hashlib.sha256()
        for item in extra:
            h.update(item.encode() + b"\0")
        for p in self.patches:
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
        return h.hexdigest()

    def touched(self) -> list[str]:
        """Paths (relative to the tree root) that the patches create, change or delete."""
        paths: list[str] = []
        for p in self.patches:
            for path in touched_paths(p.read_text(errors="replace").splitlines()):
                if path not in paths:
                    paths.append(path)
        return paths


def touched_paths(lines: Iterable[str]) -> list[str]:
    """Paths named by the ---/+++ headers of a unified diff with a/ b/ prefixes."""
    out: list[str] = []
    prev = ""
    for line in lines:
        if line.startswith("+++ ") and prev.startswith("--- "):
            for header in (prev[4:], line[4:]):
                name = header.split("\t")[0].strip()
                if name == "/dev/null":
                    continue
                if not name.startswith(("a/", "b/")) or ".." in Path(name).parts:
                    raise SeriesError(f"unexpected path {name!r} in a patch header")
                path = name[2:]
                if path not in out:
                    out.append(path)
        prev = line
    return out


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _write_if_changed(path: Path, data: bytes | None, mode: int | None) -> bool:
    current = _read(path)
    if current == data:
        return False
    if data is None:
        path.unlink()
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".vdev-tmp")
    tmp.write_bytes(data)
    if mode is not None:
        tmp.chmod(mode)
    tmp.replace(path)
    return True


def applied_digest(tree: Path) -> str | None:
    """The digest recorded by the last apply_series on `tree`, if any."""
    state = tree / STATE_FILE
    if not state.is_file():
        return None
    try:
        value = json.loads(state.read_text()).get("digest")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def apply_series(tree: Path, series: Series, originals: Path, digest: str) -> list[str]:
    """Bring `tree` to pristine + `series`; returns the paths whose content changed.

    `originals` keeps the pristine content of every path a series ever
    touched in `tree`; it must belong to `tree` alone.
    """
    state_file = tree / STATE_FILE
    old_touched: list[str] = []
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
            old_touched = [str(p) for p in state.get("touched", [])]
        except (OSError, ValueError):
            raise SeriesError(f"{state_file} is unreadable: unpack the source again") from None
    new_touched = series.touched()

    # Snapshot pristine content before anything overwrites it.  A path the old
    # series touched must already have its snapshot.
    for rel in dict.fromkeys([*old_touched, *new_touched]):
        orig, absent = originals / rel, originals / (rel + ABSENT_SUFFIX)
        if orig.is_file() or absent.is_file():
            continue
        if rel in old_touched:
            raise SeriesError(f"no pristine copy of {rel}: unpack the source again")
        current = tree / rel
        if current.is_file():
            orig.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(current, orig)
        else:
            absent.parent.mkdir(parents=True, exist_ok=True)
            absent.touch()

    everything = list(dict.fromkeys([*old_touched, *new_touched]))
    with tempfile.TemporaryDirectory(prefix="vdev-series-") as tmp:
        stage = Path(tmp)
        # Pristine content of every path either series touches: paths only
        # the old series touched go back to it.
        for rel in everything:
            orig = originals / rel
            if orig.is_file():
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(orig, stage / rel)
        for patch in series.patches:
            _patch(stage, patch)
        changed = []
        for rel in everything:
            staged = stage / rel
            mode = staged.stat().st_mode & 0o777 if staged.is_file() else None
            if _write_if_changed(tree / rel, _read(staged), mode):
                changed.append(rel)

    state_file.write_text(json.dumps({"digest": digest, "touched": new_touched}, indent=1))
    return changed


def _patch(stage: Path, patch: Path) -> None:
    proc = subprocess.run(
        ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-s",
         "-d", str(stage), "-i", str(patch)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        detail = (proc.stdout + proc.stderr).strip().splitlines()
        raise SeriesError(f"{patch.name} does not apply" + (f": {detail[0]}" if detail else ""))

